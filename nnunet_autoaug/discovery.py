"""Make nnU-Net find our trainers with its stock commands, with no set-up by the user.

nnunetv2 >= 2.8 searches the folders listed in ``nnUNet_extTrainer`` for trainer classes. It imports the modules of
those folders as *top-level* modules and purges them afterwards, so the real classes live in
``nnunet_autoaug.trainers`` and the searched folder holds only a uniquely named module that re-exports them
(``trainers/nnunet_autoaug_trainers.py`` in the source tree, ``nnunet_autoaug/ext_trainers/`` in a wheel).
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "nnUNet_extTrainer"
SHIM_MODULE = "nnunet_autoaug_trainers.py"


def ext_trainer_dir() -> Path:
    """The folder to put on ``nnUNet_extTrainer`` (installed wheel layout first, then the source checkout)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "ext_trainers", package.parent / "trainers"):
        if (candidate / SHIM_MODULE).is_file():
            return candidate
    raise FileNotFoundError(f"nnunet_autoaug is installed without its trainer folder (looked for {SHIM_MODULE} in "
                            f"{package / 'ext_trainers'} and {package.parent / 'trainers'}). Reinstall nnunet_autoaug.")


def register(environ: os._Environ | dict = os.environ) -> str:
    """Append our folder to ``nnUNet_extTrainer`` (never overwrite a user's value); return the new value."""
    folder = str(ext_trainer_dir())
    current = [p for p in environ.get(ENV_VAR, "").split(os.pathsep) if p]
    if folder not in current:
        current.append(folder)
    environ[ENV_VAR] = os.pathsep.join(current)
    return environ[ENV_VAR]
