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

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

clean:
	rm -rf demo_work build *.egg-info
