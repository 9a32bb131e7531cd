"""Both install modes make the stock nnU-Net lookup find our trainers, with no environment variable set.

Each mode installs into a throwaway venv that reuses this environment's dependencies (a plain path entry, so this
environment's own editable install of nnunet_autoaug is not seen there).
"""
from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LOOKUP = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
          "import nnunet_autoaug, pickle; c = f('nnUNetTrainerRandAug'); pickle.dumps(c); "
          "print(nnunet_autoaug.__file__); print(c.__module__)")


def throwaway_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "_reuse_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    return python


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", "PYTHONPATH")}


def run(*cmd: object, cwd: Path | None = None) -> str:
    result = subprocess.run([str(c) for c in cmd], env=clean_env(), cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_install_mode_finds_trainers(mode: str, tmp_path: Path) -> None:
    python = throwaway_venv(tmp_path / "venv")
    pip = [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    if mode == "wheel":
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "w",
            REPO)
        run(*pip, next((tmp_path / "w").glob("nnunet_autoaug-*.whl")))
    else:
        run(*pip, "-e", REPO)
    package_file, module = run(python, "-c", LOOKUP, cwd=tmp_path).strip().splitlines()[-2:]
    expected_root = tmp_path / "venv" if mode == "wheel" else REPO
    assert Path(package_file).is_relative_to(expected_root)
    assert module == "nnunet_autoaug.trainers.nnUNetTrainerRandAug"
    check = run(tmp_path / "venv" / "bin" / "nnUNetv2_autoaug_check", cwd=tmp_path)
    assert "trainer nnUNetTrainerPolicy: found" in check
