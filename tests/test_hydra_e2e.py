"""Hydranet and the base regressor on the synthetic dataset: nnUNetv2_train (-device cpu) and --c, the outputs
in the fold folder, the predict command, CSV and count targets, and settings that must fail before any output."""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.run.run_training import maybe_load_checkpoint

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.regression.hydra import sample_flips, sample_virtual_sets
from nnunet_autoaug.regression.predict import main as predict_main
from nnunet_autoaug.regression.targets import TARGET_VAR
from nnunet_autoaug.settings import SettingsError
from nnunet_autoaug.synthetic import DEFAULT_ID
from nnunet_autoaug.trainers.nnUNetTrainerHydra import nnUNetTrainerHydra_small, nnUNetTrainerRegression_small

pytestmark = pytest.mark.e2e
NAME = "Dataset990_AutoAugSynth"
NNUNET_CHECKPOINT_KEYS = {"network_weights", "optimizer_state", "grad_scaler_state", "logging", "_best_ema",
                          "current_epoch", "init_args", "trainer_name", "inference_allowed_mirroring_axes"}


@pytest.fixture
def tree(nnunet_tree: NnUNetTree) -> NnUNetTree:
    return nnunet_tree  # nnU-Net finds our trainers through the installed start-up hook, as a user's would


@pytest.fixture
def make_trainer(tree: NnUNetTree, monkeypatch: pytest.MonkeyPatch):
    """Construct a trainer in-process the way nnUNetv2_train does (one torch thread: the CPU is shared)."""
    for key, value in tree.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tree.preprocessed / NAME

    def make(cls: type, fold: int, target: str | None, configuration: str = "3d_fullres", resume: bool = False):
        if target is None:
            monkeypatch.delenv(TARGET_VAR, raising=False)
        else:
            monkeypatch.setenv(TARGET_VAR, target)
        plans = load_json(str(folder / "nnUNetPlans.json"))
        plans["continue_training"] = resume
        return cls(plans, configuration, fold, load_json(str(folder / "dataset.json")), torch.device("cpu"))
    yield make
    torch.set_num_threads(threads)


def raw_volumes(tree: NnUNetTree, split: str, label: int) -> dict[str, float]:
    """Independent reference: voxel count x voxel volume of the original label maps."""
    volumes = {}
    for path in sorted((tree.raw / NAME / f"labels{split}").glob("*.nii.gz")):
        image = sitk.ReadImage(str(path))
        volumes[path.name[:-7]] = float((sitk.GetArrayFromImage(image) == label).sum() * np.prod(image.GetSpacing()))
    return volumes


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def train(tree: NnUNetTree, trainer: str, fold: int, *extra: str, epochs: int, check: bool = True, **env: str):
    return tree.run("nnUNetv2_train", DEFAULT_ID, "3d_fullres", fold, "-tr", trainer, "-device", "cpu", *extra,
                    check=check, nnUNet_autoaug_epochs=str(epochs), nnUNet_autoaug_iters="2", **env)


def predict(capsys: pytest.CaptureFixture, *args: object) -> str:
    """The predict command, in-process (its console entry point is this function)."""
    capsys.readouterr()
    assert predict_main(["-d", str(DEFAULT_ID), "-device", "cpu", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_hydra_trains_resumes_its_exact_stream_writes_outputs_and_predicts(
        tree: NnUNetTree, make_trainer, monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path,
        load_script: Callable[[str], ModuleType]) -> None:
    trainer, env = "nnUNetTrainerHydra_small", {TARGET_VAR: "volume:1", "nnUNet_autoaug_seed": "7"}
    log = train(tree, trainer, 0, epochs=1, **env).stdout
    assert f"Using trainer '{trainer}'" in log and "sets of 4, blank probability 0.1" in log
    # `nnUNetv2_train ... --c` with 2 epochs, done in-process with nnU-Net's own resume function (saves a start-up)
    for key, value in {**env, "nnUNet_autoaug_epochs": "2", "nnUNet_autoaug_iters": "2"}.items():
        monkeypatch.setenv(key, value)
    resumed = make_trainer(nnUNetTrainerHydra_small, 0, "volume:1", resume=True)
    maybe_load_checkpoint(resumed, True, False)
    assert resumed.current_epoch == 1
    resumed.run_training()
    resumed.perform_actual_validation()

    fold0 = tree.output_folder(DEFAULT_ID, trainer, "3d_fullres", 0)
    checkpoint = torch.load(fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert set(checkpoint) == NNUNET_CHECKPOINT_KEYS | {"regression"}
    state = checkpoint["regression"]
    assert checkpoint["current_epoch"] == 2 and len(checkpoint["logging"]["mean_fg_dice"]) == 2
    # the interrupted run drew exactly the stream of an uninterrupted one: 2 epochs x 2 steps of 2 sets of 4
    generator = torch.Generator().manual_seed(7)
    for _ in range(4):
        sample_virtual_sets(len(state["train_keys"]), 2, 4, 0.1, generator)
        sample_flips(8, 3, generator)
    assert torch.equal(state["generator"], generator.get_state())
    assert state["target"] == "volume:1" and state["input_shape"] == [32, 32, 32] and state["set_size"] == 4

    # global labels: the original label maps' volumes, for every case, with the fold's split
    truth = raw_volumes(tree, "Tr", 1)
    targets = {r["case"]: (float(r["value"]), r["split"]) for r in read_rows(fold0 / "regression_targets.csv")}
    assert {c: v for c, (v, _) in targets.items()} == truth
    splits = json.loads((tree.preprocessed / NAME / "splits_final.json").read_text())
    assert sorted(c for c, (_, s) in targets.items() if s == "val") == sorted(splits[0]["val"]) == state["val_keys"]

    rows = read_rows(fold0 / "validation" / "regression_predictions.csv")
    assert [r["case"] for r in rows] == state["val_keys"]
    assert all(float(r["target"]) == truth[r["case"]] for r in rows)
    metrics = json.loads((fold0 / "validation" / "regression_metrics.json").read_text())
    errors = [float(r["prediction"]) - float(r["target"]) for r in rows]
    assert metrics["n"] == 3 and metrics["mse"] == pytest.approx(np.mean(np.square(errors)))
    assert {"icc", "icc_consistency", "empty_image_prediction", "mean_abs_target"} <= set(metrics)
    assert metrics["unit"] == "mm^3" and metrics["num_training_cases"] == 9
    assert (fold0 / "progress.png").stat().st_size > 1000

    # the predict command: the same numbers for the validation cases; new images with their own truth
    predict(capsys, "-tr", trainer, "-f", 0, "-o", tmp_path / "val")
    again = read_rows(tmp_path / "val" / "regression_predictions.csv")
    assert [r["case"] for r in again] == [r["case"] for r in rows]
    np.testing.assert_allclose([float(r["prediction"]) for r in again], [float(r["prediction"]) for r in rows],
                               rtol=1e-5)
    out = predict(capsys, "-tr", trainer, "-f", 0, "-o", tmp_path / "test", "-i", tree.raw / NAME / "imagesTs",
                  "--truth", tree.raw / NAME / "labelsTs")
    assert "against 2 true values" in out
    test_rows = read_rows(tmp_path / "test" / "regression_predictions.csv")
    assert {r["case"]: float(r["target"]) for r in test_rows} == raw_volumes(tree, "Ts", 1)
    assert json.loads((tmp_path / "test" / "regression_metrics.json").read_text())["n"] == 2

    # scripts/bench_hydra.py: its ICC curve is the log's, over both starts; a fold of another budget is refused
    bench = load_script("bench_hydra.py")
    logged = [float(v) for f in sorted(fold0.glob("training_log_*.txt"))
              for v in re.findall(r"validation \(3 cases\): ICC\(2,1\) (\S+),", f.read_text())]
    curve = bench.icc_per_epoch(fold0)
    assert len(logged) == len(curve) == 2
    assert curve == pytest.approx([0.0 if math.isnan(v) else v for v in logged], abs=5e-5)
    bench.plot_curves([{"label": 1, "num_training_cases": 9, "trainer": trainer, "icc_per_epoch": curve}],
                      tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    budget = "nnUNet_autoaug_epochs=2 nnUNet_autoaug_iters=2 nnUNet_autoaug_seed=7"
    bench.claim_fold(tmp_path / "fold", budget)
    bench.claim_fold(tmp_path / "fold", budget)  # the same budget: reused
    with pytest.raises(SystemExit, match="not nnUNet_autoaug_epochs=3 .* use a new --work folder"):
        bench.claim_fold(tmp_path / "fold", budget.replace("epochs=2", "epochs=3"))


def test_base_regressor_learns_csv_values_and_refuses_another_target_on_resume(tree: NnUNetTree, make_trainer,
                                                                              tmp_path: Path) -> None:
    cases = sorted(raw_volumes(tree, "Tr", 1))
    values = {c: 0.5 * i - 2 for i, c in enumerate(cases)}  # arbitrary numbers, negative ones included
    table = tmp_path / "values.csv"
    table.write_text("case,value\n" + "".join(f"{c},{v}\n" for c, v in values.items()))
    trainer = make_trainer(nnUNetTrainerRegression_small, 1, str(table))
    trainer.num_epochs, trainer.num_iterations_per_epoch = 1, 2
    trainer.run_training()
    trainer.perform_actual_validation()
    fold1 = Path(trainer.output_folder)
    rows = read_rows(fold1 / "validation" / "regression_predictions.csv")
    assert {r["case"]: float(r["target"]) for r in rows} == {c: values[c] for c in trainer.val_cases.keys}
    state = torch.load(fold1 / "checkpoint_final.pth", map_location="cpu", weights_only=False)["regression"]
    assert state["set_size"] == 1 and state["blank_probability"] == 0.0 and state["target_kind"] == "csv"
    # scale only, no shift: RMS of the training values
    train_values = np.array([values[c] for c in state["train_keys"]])
    assert state["target_scale"] == pytest.approx(np.sqrt(np.mean(train_values ** 2)), rel=1e-6)

    other = make_trainer(nnUNetTrainerRegression_small, 1, "volume:2", resume=True)
    with pytest.raises(SettingsError, match="was trained on nnUNet_autoaug_regression_target="):
        other.load_checkpoint(str(fold1 / "checkpoint_final.pth"))


def test_counts_come_from_the_original_labels(make_trainer) -> None:
    trainer = make_trainer(nnUNetTrainerHydra_small, 2, "count:sphere")
    assert set(trainer.targets.values()) == {1.0}  # one sphere per synthetic case
    assert "original segmentations" in trainer.target_source and len(trainer.targets) == 12


@pytest.mark.parametrize("target, configuration, extra, error, message", [
    (None, "3d_fullres", {}, SettingsError, "nnUNet_autoaug_regression_target is not set"),
    ("volume:7", "3d_fullres", {}, SettingsError, "'7' is not a foreground label of this dataset"),
    ("csv", "3d_fullres", {}, SettingsError, "has no value for 11 of the dataset's 12 cases"),
    ("volume:1", "2d", {}, NotImplementedError, "use 3d_fullres"),
    ("volume:1", "3d_fullres", {"nnUNet_autoaug_seed": "abc"}, SettingsError, "is not an integer"),
])
def test_bad_settings_fail_before_the_output_folder_exists(tree: NnUNetTree, make_trainer, monkeypatch, tmp_path,
                                                           target, configuration, extra, error, message) -> None:
    if target == "csv":
        target = str(tmp_path / "partial.csv")
        Path(target).write_text("case,value\nsynth_000,1\n")
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(error, match=message):
        make_trainer(nnUNetTrainerHydra_small, 3, target, configuration)
    assert not tree.output_folder(DEFAULT_ID, "nnUNetTrainerHydra_small", configuration, 3).exists()
