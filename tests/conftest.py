"""Shared fixtures: a real nnU-Net tree with the synthetic dataset planned and preprocessed once per session."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="session")
def load_script() -> Callable[[str], ModuleType]:
    """Loads a file under scripts/ as a module: scripts/ is not a package, and the scripts are not installed."""
    def load(relative_path: str) -> ModuleType:
        # a private name, so that no installed module is shadowed
        spec = importlib.util.spec_from_file_location("_script_" + relative_path.replace("/", "_")[:-3],
                                                      SCRIPTS / relative_path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look the module up while the class body runs
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def nnunet_tree(tmp_path_factory: pytest.TempPathFactory) -> NnUNetTree:
    """Dataset990 (12 training + 2 test cases of 32^3, labels 1 and 2), planned for 3d_fullres and 2d."""
    tree = NnUNetTree(tmp_path_factory.mktemp("nnunet"))
    make_synthetic_dataset(tree.raw, DEFAULT_ID)
    tree.plan_and_preprocess(DEFAULT_ID, ("3d_fullres", "2d"))
    return tree
