"""nnU-Net set-ups beyond the default plans and plain labels, with the stock commands:

- the residual encoder presets (nnUNetPlannerResEncM -> -p nnUNetResEncUNetMPlans), which nnU-Net recommends over
  its default plans: the searching trainers and the SCNAS retrain hint work with a plans identifier other than
  nnUNetPlans and a network other than PlainConvUNet;
- region-based training (dataset.json with regions and regions_class_order) on a two-channel image, as for BraTS.
(Cascades: test_cascade.py.)"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

pytestmark = pytest.mark.e2e
PLANS = "nnUNetResEncUNetMPlans"
SHORT = {"nnUNet_autoaug_epochs": "1", "nnUNet_autoaug_iters": "2", "nnUNet_autoaug_val_iters": "1"}


@pytest.fixture(scope="module")
def resenc_tree(tmp_path_factory: pytest.TempPathFactory) -> NnUNetTree:
    tree = NnUNetTree(tmp_path_factory.mktemp("resenc"))
    make_synthetic_dataset(tree.raw, DEFAULT_ID)
    tree.run("nnUNetv2_plan_and_preprocess", "-d", DEFAULT_ID, "-c", "3d_fullres", "-np", "1", "-npfp", "1",
             "-pl", "nnUNetPlannerResEncM")
    return tree


def test_asng_searches_and_predicts_with_resenc_plans(resenc_tree: NnUNetTree, tmp_path: Path) -> None:
    tree, trainer = resenc_tree, "nnUNetTrainerASNG"
    # one iteration: the residual encoder planner gives batch 12, and ASNG's look-ahead steps it several times
    tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres", 0, "-tr", trainer, "-p", PLANS, "-device", "cpu",
             **{**SHORT, "nnUNet_autoaug_iters": "1"})
    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0, plans=PLANS)
    saved = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert any(k.startswith("encoder.stem.") for k in saved["network_weights"])  # a ResidualEncoderUNet was trained
    # the one-step look-ahead ran through the residual network and ranked the iteration's policies
    assert saved["autoaug"]["iteration"] == 1 and sum(saved["autoaug"]["update_counts"].values()) == 1
    assert (fold0 / "autoaug_policy.json").is_file() and (fold0 / "autoaug_theta.png").stat().st_size > 1000

    pred = tmp_path / "pred"
    tree.run("nnUNetv2_predict", "-i", tree.raw / tree.dataset_name(DEFAULT_ID) / "imagesTs", "-o", pred, "-d",
             DEFAULT_ID, "-c", "3d_fullres", "-tr", trainer, "-p", PLANS, "-f", 0, "-device", "cpu", "-npp", 1,
             "-nps", 1)
    assert len(list(pred.glob("*.nii.gz"))) == 2


def test_scnas_search_on_resenc_plans_prints_a_retrain_command_that_works(resenc_tree: NnUNetTree) -> None:
    tree = resenc_tree
    env = {**SHORT, "nnUNet_autoaug_iters": "1", "nnUNet_autoaug_scnas_search_width": "4",
           "nnUNet_autoaug_scnas_width": "4"}
    log = tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerSCNASSearch", "-p", PLANS,
                   "-device", "cpu", **env).stdout
    plans = json.loads((tree.preprocessed / tree.dataset_name(DEFAULT_ID) / f"{PLANS}.json").read_text())
    assert "3d_fullres_scnas" in plans["configurations"]
    hint = next(line.strip() for line in log.splitlines() if line.strip().startswith("nnUNetv2_train"))
    assert hint.endswith(f"-tr nnUNetTrainerSCNAS -p {PLANS}")

    # the printed command, as a user would paste it (fold 0), retrains and validates the found network
    command, *args = [("0" if a == "FOLD" else a) for a in shlex.split(hint)]
    tree.run(command, *args, "-device", "cpu", **env)
    summary = tree.output_folder(DEFAULT_ID, "nnUNetTrainerSCNAS", "3d_fullres_scnas", 0, plans=PLANS)
    assert json.loads((summary / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0


def test_asng_trains_and_predicts_regions_of_a_two_channel_image(tmp_path: Path) -> None:
    """As in BraTS: regions, and several modalities, each of which gets its own gamma per sample."""
    tree, dataset_id, trainer = NnUNetTree(tmp_path / "nnunet"), 991, "nnUNetTrainerASNG"
    folder = make_synthetic_dataset(tree.raw, dataset_id, channels=2)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json.update(labels={"background": 0, "whole": [1, 2], "sphere": 2}, regions_class_order=[1, 2])
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    tree.plan_and_preprocess(dataset_id)
    tree.run("nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", trainer, "-device", "cpu", **SHORT)
    fold0 = tree.output_folder(dataset_id, trainer, "3d_fullres", 0)
    saved = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    heads = [v for k, v in saved["network_weights"].items() if "seg_layers" in k and k.endswith("weight")]
    assert heads[-1].shape[0] == 2  # one sigmoid output per region, where plain labels would give 3 softmax outputs
    assert sum(saved["autoaug"]["update_counts"].values()) == 2
    summary = json.loads((fold0 / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "2"}
    assert "2 image channels; the intensity ops that nnU-Net draws per channel get a value per channel" in \
        next(fold0.glob("training_log_*.txt")).read_text()
    assert saved["network_weights"]["encoder.stages.0.0.convs.0.conv.weight"].shape[1] == 2

    pred = tmp_path / "pred"
    tree.run("nnUNetv2_predict", "-i", folder / "imagesTs", "-o", pred, "-d", dataset_id, "-c", "3d_fullres", "-tr",
             trainer, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1)
    predicted = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(pred.glob("*.nii.gz"))]
    assert len(predicted) == 2 and all(set(np.unique(p)) <= {0, 1, 2} for p in predicted)
