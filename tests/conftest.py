"""Shared fixtures: a real nnU-Net tree with the synthetic dataset planned and preprocessed once per session."""
from __future__ import annotations

import pytest

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset


@pytest.fixture(scope="session")
def nnunet_tree(tmp_path_factory: pytest.TempPathFactory) -> NnUNetTree:
    """Dataset990 (12 training + 2 test cases of 32^3, labels 1 and 2), planned for 3d_fullres and 2d."""
    tree = NnUNetTree(tmp_path_factory.mktemp("nnunet"))
    make_synthetic_dataset(tree.raw, DEFAULT_ID)
    tree.plan_and_preprocess(DEFAULT_ID, ("3d_fullres", "2d"))
    return tree
