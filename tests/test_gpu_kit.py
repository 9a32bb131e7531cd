"""scripts/gpu_kit/pack.py: what it packs for a GPU machine without a package index (no network used here)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID


def test_the_kit_holds_what_the_target_lacks_and_nothing_it_has(load_script: Callable[[str], ModuleType]) -> None:
    pack = load_script("gpu_kit/pack.py")
    present = pack.preinstalled()
    assert {"torch", "numpy", "scipy", "scikit-image", "pandas", "matplotlib"} <= present
    missing = pack.missing_distributions(pack.ROOTS, present, "3.12")
    # nnU-Net itself and the requirements the image lacks, followed through nnU-Net's own requirements
    assert {"nnunetv2", "simpleitk", "acvl-utils", "dynamic-network-architectures", "batchgeneratorsv2",
            "batchgenerators", "blosc2", "nibabel"} <= set(missing)
    assert not set(missing) & present
    # left out on purpose: imagecodecs is not needed, and argparse's backport would shadow the standard library
    assert not {"imagecodecs", "argparse"} & set(missing)
    from importlib.metadata import version
    assert missing["nnunetv2"] == version("nnunetv2")
    # against an empty image everything is packed, torch included: the walk really follows the requirements
    assert {"torch", "numpy", "nnunetv2"} <= set(pack.missing_distributions(pack.ROOTS, set(), "3.12"))


def test_the_kit_takes_the_first_cases_and_lets_nnunet_split_them(nnunet_tree: NnUNetTree, tmp_path: Path,
                                                                  load_script: Callable[[str], ModuleType]) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    pack = load_script("gpu_kit/pack.py")
    dataset = nnunet_tree.preprocessed / nnunet_tree.dataset_name(DEFAULT_ID)
    names = pack.copy_cases(dataset, tmp_path, "3d_fullres", 10)
    copy = tmp_path / dataset.name
    assert names == sorted(names) and len(names) == 10
    assert not (copy / "splits_final.json").exists()  # a split over all cases would name cases left behind
    assert (copy / "nnUNetPlans.json").exists() and (copy / "dataset.json").exists()
    data = copy / "nnUNetPlans_3d_fullres"
    assert sorted(infer_dataset_class(str(data))(str(data)).identifiers) == names
    assert sorted(p.name for p in (copy / "gt_segmentations").iterdir()) == sorted(
        p.name for p in (dataset / "gt_segmentations").iterdir() if p.name.split(".")[0] in names)
    with pytest.raises(SystemExit, match="at least 10"):
        pack.copy_cases(dataset, tmp_path, "3d_fullres", 9)
    with pytest.raises(SystemExit, match="plan and preprocess 3d_lowres"):
        pack.copy_cases(dataset, tmp_path, "3d_lowres", 10)
