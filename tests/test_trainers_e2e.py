"""End to end with the stock commands: nnUNetv2_train (-device cpu), --c, nnUNetv2_find_best_configuration,
nnUNetv2_predict, nnUNetv2_apply_postprocessing, nnUNetv2_evaluate_folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.policy import PRESETS, Policy
from nnunet_autoaug.policy.asng_space import ASNG_SPACE
from nnunet_autoaug.policy.asng_theta_space import ASNG_THETA_SPACE
from nnunet_autoaug.synthetic import DEFAULT_ID

pytestmark = pytest.mark.e2e
NNUNET_CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}


def train(tree: NnUNetTree, trainer: str, fold: int, *extra: str, configuration: str = "3d_fullres", epochs: int = 1,
          check: bool = True, **env: str):
    return tree.run("nnUNetv2_train", DEFAULT_ID, configuration, fold, "-tr", trainer, "-device", "cpu", *extra,
                    check=check, nnUNet_autoaug_epochs=str(epochs), nnUNet_autoaug_iters="3",
                    nnUNet_autoaug_val_iters="1", **env)


def checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)


def snapshot(folder: Path) -> dict[str, float]:
    """Files and modification times, except the log nnU-Net opens for every run."""
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.is_file() and "training_log" not in p.name}


def test_randaug_trains_resumes_exactly_selects_predicts_and_evaluates(nnunet_tree: NnUNetTree, tmp_path: Path) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerRandAug"
    straight = train(tree, trainer, 0, epochs=2, nnUNet_autoaug_seed="7").stdout
    assert "schedule set by environment variables" in straight and "Using trainer 'nnUNetTrainerRandAug'" in straight
    train(tree, trainer, 1, epochs=1, nnUNet_autoaug_seed="7")
    resumed = train(tree, trainer, 1, "--c", epochs=2, nnUNet_autoaug_seed="7").stdout
    assert "Epoch 1" in resumed and "Epoch 0\n" not in resumed

    a = checkpoint(tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0))
    b = checkpoint(tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 1))
    assert set(a) == NNUNET_CHECKPOINT_KEYS | {"autoaug"}
    assert a["current_epoch"] == b["current_epoch"] == 2 and len(b["logging"]["train_losses"]) == 2
    # the interrupted run drew exactly the augmentation stream of the uninterrupted one
    assert torch.equal(a["autoaug"]["augment_generator"], b["autoaug"]["augment_generator"])

    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0)
    for picture in ("progress.png", "augmentation_examples.png"):
        assert (fold0 / picture).stat().st_size > 1000
    assert json.loads((fold0 / "validation" / "summary.json").read_text())["foreground_mean"]["Dice"] >= 0

    # nnU-Net's own model selection over the trained folds, then what it prints: predict with the folds' ensemble,
    # apply the chosen postprocessing, evaluate
    tree.run("nnUNetv2_find_best_configuration", DEFAULT_ID, "-c", "3d_fullres", "-tr", trainer, "-f", 0, 1, "-np", 1)
    selection = json.loads((tree.results / tree.dataset_name(DEFAULT_ID) / "inference_information.json").read_text())
    best = selection["best_model_or_ensemble"]
    assert best["selected_model_or_models"] == [{"configuration": "3d_fullres", "plans_identifier": "nnUNetPlans",
                                                 "trainer": trainer}]
    crossval = Path(best["postprocessing_file"]).parent
    assert crossval == fold0.parent / "crossval_results_folds_0_1"
    validated = [c.name for f in (0, 1) for c in (fold0.parent / f"fold_{f}" / "validation").glob("*.nii.gz")]
    assert sorted(c.name for c in crossval.glob("*.nii.gz")) == sorted(validated)  # both folds' cases, merged

    raw = tree.raw / "Dataset990_AutoAugSynth"
    pred, pred_pp = tmp_path / "pred", tmp_path / "pred_pp"
    tree.run("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", pred, "-d", DEFAULT_ID, "-c", "3d_fullres", "-tr",
             trainer, "-f", 0, 1, "-device", "cpu", "-npp", 1, "-nps", 1)
    tree.run("nnUNetv2_apply_postprocessing", "-i", pred, "-o", pred_pp, "-pp_pkl_file", best["postprocessing_file"],
             "-np", 1, "-plans_json", best["some_plans_file"])
    cases = sorted(pred_pp.glob("*.nii.gz"))
    assert [c.name for c in cases] == ["synth_012.nii.gz", "synth_013.nii.gz"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(cases[0])))
    assert seg.shape == (32, 32, 32) and set(seg.ravel().tolist()) <= {0, 1, 2}
    tree.run("nnUNetv2_evaluate_folder", raw / "labelsTs", pred_pp, "-djfile", crossval / "dataset.json",
             "-pfile", crossval / "plans.json", "-np", 1)
    summary = json.loads((pred_pp / "summary.json").read_text())
    assert len(summary["metric_per_case"]) == 2 and 0 <= summary["foreground_mean"]["Dice"] <= 1


def test_policy_trainer_uses_policy_file_and_protects_results(nnunet_tree: NnUNetTree, tmp_path: Path) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerPolicy"
    levels = dict(zip(ASNG_SPACE.variables, [2, 8, 3, 7, 4, 6, 5, 5, 1, 9, 2, 8, 3, 7, 6, 4, 8, 2]))
    policy = Policy.create("asng", levels)
    policy.save(tmp_path / "mine.json")
    log = train(tree, trainer, 0, nnUNet_autoaug_policy=str(tmp_path / "mine.json")).stdout
    assert "space 'asng'" in log
    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0)
    assert Policy.load(fold0 / "autoaug_policy.json") == policy
    assert Policy.from_json_dict(checkpoint(fold0)["autoaug"]["policy"]) == policy

    PRESETS["nnunet_default"].save(tmp_path / "other.json")
    before = snapshot(fold0)
    refused = train(tree, trainer, 0, "--c", epochs=2, check=False, nnUNet_autoaug_policy=str(tmp_path / "other.json"))
    assert refused.returncode != 0 and "trained with a different policy" in refused.stdout
    assert snapshot(fold0) == before


def test_bad_inputs_fail_clearly_without_creating_results(nnunet_tree: NnUNetTree, tmp_path: Path) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerPolicy"
    bad = PRESETS["nnunet_default"].to_json_dict()
    bad["values"]["bogus_op"] = 0.5
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    result = train(tree, trainer, 3, check=False, nnUNet_autoaug_policy=str(tmp_path / "bad.json"))
    assert result.returncode != 0 and "unknown field(s) ['bogus_op']" in result.stdout
    result = train(tree, "nnUNetTrainerRandAug", 4, check=False, nnUNet_autoaug_seed="abc")
    assert result.returncode != 0 and "nnUNet_autoaug_seed='abc' is not an integer" in result.stdout
    for t, fold in ((trainer, 3), ("nnUNetTrainerRandAug", 4)):
        assert not tree.output_folder(DEFAULT_ID, t, "3d_fullres", fold).exists()


def test_default_policy_trains_2d_configuration(nnunet_tree: NnUNetTree) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerPolicy"
    train(tree, trainer, 0, configuration="2d")
    fold0 = tree.output_folder(DEFAULT_ID, trainer, "2d", 0)
    assert Policy.load(fold0 / "autoaug_policy.json") == PRESETS["nnunet_default"]
    assert checkpoint(fold0)["inference_allowed_mirroring_axes"] == (0, 1)
    assert (fold0 / "validation" / "summary.json").is_file()


def test_asng_searches_resumes_its_state_writes_outputs_and_predicts(nnunet_tree: NnUNetTree, tmp_path: Path) -> None:
    tree, trainer = nnunet_tree, "nnUNetTrainerASNG"
    log = train(tree, trainer, 0, epochs=1, nnUNet_autoaug_seed="3").stdout
    assert "held out for the search split" in log and "ASNG policy:" in log
    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0)
    first = checkpoint(fold0)["autoaug"]
    log = train(tree, trainer, 0, "--c", epochs=2).stdout
    # the retraining on all training cases: first (recommended) from the final theta, then with its most likely policy
    with_theta = log.index(f"nnUNet_autoaug_policy={fold0 / 'autoaug_theta.json'} nnUNetv2_train")
    assert log.index(f"nnUNet_autoaug_policy={fold0} nnUNetv2_train {tree.dataset_name(DEFAULT_ID)} 3d_fullres 0 "
                     "-tr nnUNetTrainerPolicy\n") > with_theta
    final = checkpoint(fold0)["autoaug"]
    assert first["iteration"] == 3 and final["iteration"] == 6
    assert final["augment_seed"] == 3  # the resumed run kept the original sampler, not a fresh one
    np.testing.assert_array_equal(final["theta_history"][0], first["asng"]["theta"])
    assert sum(final["update_counts"].values()) == 6
    history = json.loads((fold0 / "autoaug_theta_history.json").read_text())
    assert len(history["theta"]) == 2 and len(history["variables"]) == 18
    policy = Policy.load(fold0 / "autoaug_policy.json", expected_space="asng")
    assert [int(v) for _, v in policy.values] == final["asng"]["theta"].argmax(axis=1).tolist()
    distribution = Policy.load(fold0 / "autoaug_theta.json", expected_space="asng_theta")
    np.testing.assert_allclose(ASNG_THETA_SPACE.theta(distribution), final["asng"]["theta"])
    assert ASNG_THETA_SPACE.most_likely(distribution) == policy
    assert (fold0 / "autoaug_theta.png").stat().st_size > 1000

    pred = tmp_path / "pred"
    tree.run("nnUNetv2_predict", "-i", tree.raw / "Dataset990_AutoAugSynth" / "imagesTs", "-o", pred, "-d",
             DEFAULT_ID, "-c", "3d_fullres", "-tr", trainer, "-f", 0, "-device", "cpu", "-npp", 1, "-nps", 1)
    assert len(list(pred.glob("*.nii.gz"))) == 2
    # the search's final theta trains with nnUNetTrainerPolicy (a most likely policy does: the test above)
    log = train(tree, "nnUNetTrainerPolicy", 1, nnUNet_autoaug_policy=str(fold0 / "autoaug_theta.json")).stdout
    assert f"space 'asng_theta'): draws per sample around {ASNG_SPACE.summary(policy)}" in log
    assert Policy.load(tree.output_folder(DEFAULT_ID, "nnUNetTrainerPolicy", "3d_fullres", 1)) == distribution


@pytest.mark.parametrize("trainer, rankings", [("nnUNetTrainerASNGFast", 2), ("nnUNetTrainerASNGShared", 3)])
def test_asng_option_trains(nnunet_tree: NnUNetTree, trainer: str, rankings: int) -> None:
    train(nnunet_tree, trainer, 0)  # 3 iterations; the fast mode ranks every second one (iterations 0 and 2)
    state = checkpoint(nnunet_tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0))["autoaug"]
    assert sum(state["update_counts"].values()) == rankings and state["update_counts"]["updated"] >= 1
