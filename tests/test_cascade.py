"""nnU-Net's cascade (3d_lowres, then 3d_cascade_fullres on the low-resolution predictions) with a searching trainer:
the engine's output gets the previous stage as corrupted one-hot channels, as nnU-Net's pipeline gives it."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_autoaug.augment.cascade import PreviousStageCorruption, cascade_inputs
from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

TRAINER = "nnUNetTrainerASNG"
SHORT = {"nnUNet_autoaug_epochs": "1", "nnUNet_autoaug_iters": "2", "nnUNet_autoaug_val_iters": "1"}


def test_cascade_inputs_append_the_previous_stage_corrupted_per_seed() -> None:
    labels = [1, 2, 3]
    corruption = PreviousStageCorruption((24, 24, 24), labels)
    data = torch.randn(2, 1, 24, 24, 24)
    seg = torch.zeros(2, 2, 24, 24, 24, dtype=torch.int16)
    seg[:, 0, 4:12] = 1  # the target
    for label in labels:  # the previous stage: one block per label
        seg[:, 1, 6 * label - 4:6 * label + 2, 4:20, 4:20] = label
    clean = torch.stack([seg[:, 1] == label for label in labels], 1).float()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()

    outputs = [cascade_inputs(data, seg, labels, corruption, torch.tensor([s, s + 100])) for s in range(12)]
    for out, target in outputs:
        assert out.shape == (2, 4, 24, 24, 24) and torch.equal(out[:, :1], data)
        assert torch.equal(target, seg[:, :1])
        assert set(out[:, 1:].unique().tolist()) <= {0.0, 1.0}
    changed = [not torch.equal(out[i, 1:], clean[i]) for out, _ in outputs for i in range(2)]
    assert 3 <= sum(changed) < len(changed)  # nnU-Net corrupts about half of the samples (p = 0.4 and 0.2)
    # a sample's draws depend on its seed alone, not on its batch or on the calls before (a resume starts afresh)
    fresh = PreviousStageCorruption((24, 24, 24), labels)
    for s in reversed(range(12)):
        again, _ = cascade_inputs(data.flip(0), seg.flip(0), labels, fresh, torch.tensor([s + 100, s]))
        assert torch.equal(again.flip(0), outputs[s][0])
    assert torch.equal(torch.get_rng_state(), torch_state) and np.array_equal(np.random.get_state()[1], np_state)
    with pytest.raises(ValueError, match="second label channel"):
        cascade_inputs(data, seg[:, :1], labels, corruption, torch.tensor([0, 1]))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> NnUNetTree:
    """The synthetic dataset with a cascade: 3d_lowres at twice the spacing (the planner adds one only for images
    much larger than the patch) and two folds, so that the low-resolution stage predicts every training case."""
    tree = NnUNetTree(tmp_path_factory.mktemp("cascade"))
    make_synthetic_dataset(tree.raw, DEFAULT_ID)
    tree.plan_and_preprocess(DEFAULT_ID)
    folder = tree.preprocessed / tree.dataset_name(DEFAULT_ID)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    fullres = plans["configurations"]["3d_fullres"]
    plans["configurations"]["3d_lowres"] = {**copy.deepcopy(fullres), "data_identifier": "nnUNetPlans_3d_lowres",
                                            "spacing": [2 * s for s in fullres["spacing"]], "batch_dice": False,
                                            "next_stage": "3d_cascade_fullres"}
    plans["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    (folder / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    tree.run("nnUNetv2_preprocess", "-d", DEFAULT_ID, "-c", "3d_lowres", "-np", "1")
    cases = [f"synth_{i:03d}" for i in range(12)]
    splits = [{"train": cases[6:], "val": cases[:6]}, {"train": cases[:6], "val": cases[6:]}]
    (folder / "splits_final.json").write_text(json.dumps(splits))
    return tree


@pytest.mark.e2e
def test_asng_trains_both_stages_and_stock_predict_runs_the_cascade(tree: NnUNetTree, tmp_path: Path) -> None:
    for fold in (0, 1):
        tree.run("nnUNetv2_train", DEFAULT_ID, "3d_lowres", fold, "-tr", TRAINER, "-device", "cpu",
                 **{**SHORT, "nnUNet_autoaug_iters": "1"})
    low = tree.output_folder(DEFAULT_ID, TRAINER, "3d_lowres", 0).parent / "predicted_next_stage" / "3d_cascade_fullres"
    assert {p.name.split(".")[0] for p in low.iterdir()} == {f"synth_{i:03d}" for i in range(12)}

    log = tree.run("nnUNetv2_train", DEFAULT_ID, "3d_cascade_fullres", 0, "-tr", TRAINER, "-device", "cpu",
                   **SHORT).stdout
    assert "ASNG policy:" in log
    fold0 = tree.output_folder(DEFAULT_ID, TRAINER, "3d_cascade_fullres", 0)
    saved = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    first_conv = next(v for k, v in saved["network_weights"].items() if k.endswith("weight") and v.ndim == 5)
    assert first_conv.shape[1] == 3  # the image plus one channel per foreground label of the previous stage
    assert saved["autoaug"]["iteration"] == 2 and sum(saved["autoaug"]["update_counts"].values()) == 2
    assert json.loads((fold0 / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0

    images = tree.raw / tree.dataset_name(DEFAULT_ID) / "imagesTs"
    common = ["-d", DEFAULT_ID, "-tr", TRAINER, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1]
    tree.run("nnUNetv2_predict", "-i", images, "-o", tmp_path / "low", "-c", "3d_lowres", *common)
    tree.run("nnUNetv2_predict", "-i", images, "-o", tmp_path / "pred", "-c", "3d_cascade_fullres", *common,
             "-prev_stage_predictions", tmp_path / "low")
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2
