# Both targets create .venv/ (if missing) and install the package with its test extra into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test,search]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py $(if $(DATA),--data $(DATA))

# Two pytest workers of one thread each, a test file per worker (module fixtures are built once): most of an
# end-to-end test's time is nnU-Net's process start-up and file I/O, so on 2 cores this takes 25 min against 31 min
# for one worker with two threads (docs/BENCHMARKS.md section 12). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=15

clean:
	rm -rf demo_work build *.egg-info
