"""nnU-Net finds our trainers with no user set-up; signatures stay what nnU-Net calls; versions are guarded."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys

import pytest
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

from nnunet_autoaug import trainers
from nnunet_autoaug.compat import check_nnunet_version
from nnunet_autoaug.discovery import ENV_VAR, ext_trainer_dir, register


def test_register_appends_and_is_idempotent() -> None:
    env = {ENV_VAR: "/my/own/trainers"}
    value = register(env)
    assert value == os.pathsep.join(["/my/own/trainers", str(ext_trainer_dir())])
    assert register(env) == value  # no duplicates
    assert register({}) == str(ext_trainer_dir())


def test_startup_hook_appends_to_user_value() -> None:
    code = "import os; print(os.environ['nnUNet_extTrainer'])"
    env = {**os.environ, ENV_VAR: "/user/dir"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().split(os.pathsep) == ["/user/dir", str(ext_trainer_dir())]


def init_parameters(cls: type) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]


@pytest.mark.parametrize("name", trainers.__all__)
def test_nnunet_lookup_finds_each_trainer_with_nnunets_signatures(name: str) -> None:
    cls = recursive_find_trainer_class_by_name(name)
    assert cls is getattr(trainers, name)  # the real class (picklable), not a purged shim copy
    assert issubclass(cls, nnUNetTrainer)
    # nnU-Net rebuilds my_init_kwargs from the signature's names: they and the defaults must not change
    assert init_parameters(cls) == init_parameters(nnUNetTrainer)
    assert "plans_manager" in inspect.signature(cls.build_network_architecture).parameters


def test_shim_folder_only_reexports() -> None:
    folder = ext_trainer_dir()
    modules = sorted(p.name for p in folder.glob("*.py"))
    assert modules == ["nnunet_autoaug_trainers.py"]
    assert "class " not in (folder / modules[0]).read_text()


@pytest.mark.parametrize("version, ok", [("2.8.0", True), ("2.8.1", True), ("2.7.0", False), ("2.9.0", False),
                                         ("2.6.4", False)])
def test_nnunet_version_guard(version: str, ok: bool) -> None:
    if ok:
        assert check_nnunet_version(version) == version
    else:
        with pytest.raises(ImportError, match=f"nnunetv2 {version} is installed.*pip install 'nnunetv2>=2.8,<2.9'"):
            check_nnunet_version(version)
