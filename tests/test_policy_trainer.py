"""The base trainer on real nnU-Net objects: search split, targets built exactly as nnU-Net builds them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_autoaug.augment import AugmentParams
from nnunet_autoaug.augment.spatial import centre_crop
from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.search_split import split_search_cases
from nnunet_autoaug.settings import INIT_SEED_VAR, POLICY_VAR, SettingsError
from nnunet_autoaug.trainers import nnUNetTrainerPolicy, nnUNetTrainerRandAug, nnUNetTrainerScheduled


class RandAugWithSearchSplit(nnUNetTrainerRandAug):
    """What a searcher does: hold out a quarter of the fold's training cases."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.search_fraction = 0.25


@pytest.fixture
def make_trainer(nnunet_tree: NnUNetTree, monkeypatch: pytest.MonkeyPatch):
    for key, value in nnunet_tree.env().items():
        if key.startswith("nnUNet_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # in-process loaders: nothing to fork in a test
    folder = nnunet_tree.preprocessed / "Dataset990_AutoAugSynth"

    def make(cls: type = nnUNetTrainerRandAug, fold: int = 0):
        plans = load_json(str(folder / "nnUNetPlans.json"))
        plans["continue_training"] = False  # what nnUNetv2_train adds before constructing a trainer
        trainer = cls(plans, "3d_fullres", fold, load_json(str(folder / "dataset.json")), torch.device("cpu"))
        trainer.initialize()
        return trainer
    return make


def test_init_seed_gives_stock_and_policy_trainers_the_same_initial_weights(make_trainer, monkeypatch) -> None:
    def same_weights(a, b) -> bool:  # noqa: ANN001 - every tensor, the seg layers included
        theirs = b.network.state_dict()
        return all(torch.equal(v, theirs[k]) for k, v in a.network.state_dict().items())

    monkeypatch.setenv(INIT_SEED_VAR, "3")
    before = torch.get_rng_state()
    stock = make_trainer(nnUNetTrainerScheduled)
    assert torch.equal(torch.get_rng_state(), before)  # only the initial weights are seeded, not the training
    policy = make_trainer(nnUNetTrainerPolicy)
    assert same_weights(stock, policy)
    assert "initial weights drawn after torch.manual_seed(3)" in Path(policy.log_file).read_text()
    assert stock.initial_weight_sum == policy.initial_weight_sum  # what the logs and the comparison harness report
    assert f"sum of the initial weights {policy.initial_weight_sum:.6f}" in Path(policy.log_file).read_text()
    monkeypatch.setenv(INIT_SEED_VAR, "4")
    assert not same_weights(stock, make_trainer(nnUNetTrainerPolicy))
    monkeypatch.delenv(INIT_SEED_VAR)  # without it nnU-Net draws fresh weights, as it always does
    unseeded = make_trainer(nnUNetTrainerScheduled)
    assert not same_weights(unseeded, make_trainer(nnUNetTrainerScheduled)) and unseeded.initial_weight_sum is None
    monkeypatch.setenv(INIT_SEED_VAR, "x3")
    with pytest.raises(SettingsError, match=f"{INIT_SEED_VAR}='x3' is not an integer"):
        make_trainer(nnUNetTrainerScheduled)


def test_a_policy_variable_that_the_trainer_does_not_read_is_logged(make_trainer, monkeypatch) -> None:
    monkeypatch.setenv(POLICY_VAR, "mirror_only")
    note = f"nnunet_autoaug: {POLICY_VAR} is set, but nnUNetTrainerRandAug does not read it"
    assert note in Path(make_trainer(nnUNetTrainerRandAug).log_file).read_text()
    policy_log = Path(make_trainer(nnUNetTrainerPolicy).log_file).read_text()
    assert "is set, but" not in policy_log and "(mirror_only, space 'rl')" in policy_log


def test_search_split_is_carved_from_training_cases_only(make_trainer) -> None:
    trainer = make_trainer(RandAugWithSearchSplit)
    fold_train, fold_val = trainer.do_split()
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    search = set(trainer.search_keys)
    assert len(search) == round(0.25 * len(fold_train))
    assert search.isdisjoint(dataset_tr.identifiers) and search.isdisjoint(fold_val)
    assert search | set(dataset_tr.identifiers) == set(fold_train)
    assert sorted(dataset_val.identifiers) == sorted(fold_val)
    again = make_trainer(RandAugWithSearchSplit)
    again.get_tr_and_val_datasets()
    assert again.search_keys == trainer.search_keys  # deterministic: resumes and searchers agree
    with pytest.raises(ValueError, match="at least 2 training cases in the fold, got 1.*nnUNetTrainerRandAug"):
        split_search_cases(fold_train[:1], 0.2)

    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batch = next(trainer.dataloader_search)
    assert set(batch["keys"]) <= search
    assert [tuple(t.shape[2:]) for t in batch["target"]] == [(32, 32, 32), (16, 16, 16), (8, 8, 8)]


def test_identity_augmentation_gives_nnunets_own_targets(make_trainer) -> None:
    trainer = make_trainer()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    patch = trainer.configuration_manager.patch_size
    assert tuple(batch["data"].shape[2:]) == (80, 82, 80)  # crop sized for the ASNG space's +-30 deg and x1.5
    data, target = trainer.augment(batch, AugmentParams.identity(batch["data"].shape[0]))
    # nnU-Net's validation pipeline on the same centre crop: RemoveLabel(-1 -> 0) + deep-supervision downsampling
    reference = trainer.get_validation_transforms(trainer._get_deep_supervision_scales())
    cropped_seg = centre_crop(batch["target"], patch)
    for i in range(batch["data"].shape[0]):
        expected = reference(image=centre_crop(batch["data"], patch)[i], segmentation=cropped_seg[i])
        assert torch.equal(data[i], expected["image"])
        for ours, theirs in zip(target, expected["segmentation"]):
            assert torch.equal(ours[i], theirs)
    assert trainer.last_augment_params is not None


def test_checkpoint_keys_are_nnunets_plus_search_state(make_trainer, tmp_path) -> None:
    trainer = make_trainer()
    trainer.save_checkpoint(str(tmp_path / "ours.pth"))
    nnUNetTrainer.save_checkpoint(trainer, str(tmp_path / "theirs.pth"))
    ours = torch.load(tmp_path / "ours.pth", weights_only=False)
    theirs = torch.load(tmp_path / "theirs.pth", weights_only=False)
    assert set(ours) == set(theirs) | {"autoaug"}
    state = trainer.augment_generator.get_state()
    torch.rand(3, generator=trainer.augment_generator)
    trainer.load_checkpoint(str(tmp_path / "ours.pth"))
    assert torch.equal(trainer.augment_generator.get_state(), state)


def test_a_checkpoint_write_that_fails_halfway_keeps_the_previous_checkpoint(make_trainer, tmp_path) -> None:
    trainer = make_trainer()
    path = tmp_path / "checkpoint_latest.pth"
    trainer.save_checkpoint(str(path))
    before = path.read_bytes()
    trainer.search_state_dict = lambda: {"unpicklable": lambda: None}  # torch.save fails after it started writing
    with pytest.raises(Exception, match="pickle"):
        trainer.save_checkpoint(str(path))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    del trainer.search_state_dict
    trainer.load_checkpoint(str(path))  # what --c would do


def test_asng_step_updates_theta_every_k_iterations(make_trainer) -> None:
    from nnunet_autoaug.trainers import nnUNetTrainerASNG

    trainer = make_trainer(nnUNetTrainerASNG)
    trainer.theta_update_every = 2
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    theta = trainer.searcher.theta.copy()
    for _ in range(3):
        result = trainer.train_step(next(trainer.dataloader_train))
    assert np.isfinite(result["loss"])
    assert sum(trainer.update_counts.values()) == 2  # iterations 0 and 2
    assert not np.array_equal(trainer.searcher.theta, theta)
    assert len(trainer.optimizer.state) > 0  # the real step happened; look-aheads never step it (test_lookahead)


def test_asng_shared_ranks_the_weight_steps_own_policies(make_trainer) -> None:
    from nnunet_autoaug.trainers import nnUNetTrainerASNGShared

    trainer = make_trainer(nnUNetTrainerASNGShared)
    trainer.num_weight_policies = 5  # not used: the weight step takes the lam ranked policies
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    drawn, sample = [], trainer.searcher.sample
    trainer.searcher.sample = lambda n, g: drawn.append(n) or sample(n, g)
    ranked, update = [], trainer.searcher.update
    trainer.searcher.update = lambda samples, losses: ranked.append(samples) or update(samples, losses)
    weights = [p.detach().clone() for p in trainer.network.parameters()]
    theta = trainer.searcher.theta.copy()
    result = trainer.train_step(next(trainer.dataloader_train))
    assert np.isfinite(result["loss"])
    assert drawn == [trainer.lam] and len(ranked) == 1 and len(ranked[0]) == trainer.lam  # one draw serves both
    assert not np.array_equal(trainer.searcher.theta, theta)
    assert any(not torch.equal(w, p) for w, p in zip(weights, trainer.network.parameters()))  # the real step ran
    assert len(trainer.optimizer.state) > 0


def test_asng_fast_ranks_on_half_a_search_batch(make_trainer) -> None:
    from nnunet_autoaug.trainers import nnUNetTrainerASNG, nnUNetTrainerASNGFast

    fast, faithful = make_trainer(nnUNetTrainerASNGFast), make_trainer(nnUNetTrainerASNG)
    for trainer in (fast, faithful):
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    data, target = fast._search_batch()
    assert data.shape[0] == max(1, fast.batch_size // 2) and all(t.shape[0] == data.shape[0] for t in target)
    assert faithful._search_batch()[0].shape[0] == faithful.batch_size
    assert fast.theta_update_every == 2
    result = fast.train_step(next(fast.dataloader_train))
    assert np.isfinite(result["loss"]) and fast.update_counts["updated"] + fast.update_counts["skipped"] == 1


def test_asng_fast_between_rankings_takes_nnunets_plain_step_on_the_policy_views(
        make_trainer, monkeypatch: pytest.MonkeyPatch) -> None:
    from nnunet_autoaug.trainers import nnUNetTrainerASNGFast

    trainer = make_trainer(nnUNetTrainerASNGFast)
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.train_step(next(trainer.dataloader_train))  # iteration 0 ranks
    theta, weights = trainer.searcher.theta.copy(), [p.detach().clone() for p in trainer.network.parameters()]
    seen, searched, plain = [], [], nnUNetTrainer.train_step
    monkeypatch.setattr(trainer, "_search_batch", lambda: searched.append(1))  # must not be needed
    monkeypatch.setattr(nnUNetTrainer, "train_step", lambda self, batch: seen.append(batch) or plain(self, batch))
    batch = next(trainer.dataloader_train)
    result = trainer.train_step(batch)  # iteration 1: no ranking
    assert np.isfinite(result["loss"]) and not searched and sum(trainer.update_counts.values()) == 1
    assert np.array_equal(trainer.searcher.theta, theta)
    assert len(seen) == 1 and seen[0]["data"].shape[0] == batch["data"].shape[0]  # policies on shares, one step
    assert any(not torch.equal(w, p) for w, p in zip(weights, trainer.network.parameters()))


def test_compare_pipelines_script_summarises_both_pipelines_on_real_batches(nnunet_tree: NnUNetTree) -> None:
    import re
    import subprocess
    import sys
    from pathlib import Path

    from nnunet_autoaug.synthetic import DEFAULT_ID

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_pipelines.py"
    results_before = sorted(p.name for p in nnunet_tree.results.rglob("*"))
    out = subprocess.run([sys.executable, str(script), "--preprocessed", str(nnunet_tree.preprocessed), "--dataset",
                          nnunet_tree.dataset_name(DEFAULT_ID), "--batches", "4"],
                         env=nnunet_tree.env(), capture_output=True, text=True, check=True).stdout
    lines = {name: line for name in ("nnUNetTrainerScheduled", "nnUNetTrainerPolicy")
             for line in out.splitlines() if line.startswith(name + ":")}
    assert len(lines) == 2, out
    for line in lines.values():
        shares = [float(v) for v in re.findall(r"label \d+ ([0-9.]+)", line)]
        assert len(shares) == 2 and all(0 < s < 1 for s in shares), line
        assert int(re.search(r"cases seen (\d+)", line).group(1)) >= 2
    assert sorted(p.name for p in nnunet_tree.results.rglob("*")) == results_before  # writes into a temporary tree
    bad = subprocess.run([sys.executable, str(script), "--preprocessed", str(nnunet_tree.preprocessed), "--dataset",
                          "Dataset999_Missing"], env=nnunet_tree.env(), capture_output=True, text=True)
    assert bad.returncode != 0 and "planned and preprocessed dataset" in bad.stderr


def test_compare_pipelines_trains_every_arm_from_the_same_weights_per_seed(nnunet_tree: NnUNetTree,
                                                                            tmp_path: Path) -> None:
    import csv
    import re
    import subprocess
    import sys

    from nnunet_autoaug.synthetic import DEFAULT_ID

    script = Path(__file__).resolve().parents[1] / "scripts" / "compare_pipelines.py"
    command = [sys.executable, str(script), "--preprocessed", str(nnunet_tree.preprocessed), "--dataset",
               nnunet_tree.dataset_name(DEFAULT_ID), "--train-steps", "2", "--seeds", "2"]

    def run(arms: list[str], name: str) -> tuple[str, list[dict]]:
        out = subprocess.run([*command, "--arms", *arms, "--csv", str(tmp_path / name)], env=nnunet_tree.env(),
                             capture_output=True, text=True, check=True).stdout
        with open(tmp_path / name, newline="") as f:
            return out, list(csv.DictReader(f))

    out, rows = run(["nnunet_in_process", "engine_nnunet_crop"], "a.csv")
    assert len(rows) == 2 * 2 * 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    start = {(r["arm"], r["seed"]): float(r["initial_weight_sum"]) for r in rows}
    assert start["nnunet_in_process", "0"] == start["engine_nnunet_crop", "0"]  # paired within a seed
    assert start["nnunet_in_process", "0"] != start["nnunet_in_process", "1"]
    header = next(line for line in out.splitlines() if line.startswith("2 training steps per arm"))
    crops = dict(re.findall(r"(nnUNetTrainer\w+) (\(\d+, \d+, \d+\))", header))
    assert crops["nnUNetTrainerScheduled"] != crops["nnUNetTrainerPolicy"], out
    assert f"| engine_nnunet_crop | nnUNetTrainerPolicy, {crops['nnUNetTrainerScheduled']}, 1 |" in out
    assert re.search(r"\| engine_nnunet_crop \|.*\| [0-2] of 2 \| [0-9.e-]+ \|", out), out
    # in the training process every draw is seeded: a rerun repeats the losses exactly
    _, again = run(["nnunet_in_process"], "b.csv")
    assert [r["train_loss"] for r in again] == [r["train_loss"] for r in rows if r["arm"] == "nnunet_in_process"]
    duplicate = subprocess.run([*command, "--arms", "engine", "engine"], env=nnunet_tree.env(), capture_output=True,
                               text=True)
    assert duplicate.returncode != 0 and "each arm once" in duplicate.stderr
    assert {float(r["learning_rate"]) for r in rows} == {0.01}  # by default epoch 0's rate throughout
    # nnU-Net's schedule: 2 steps as 2 epochs of 1 step, the poly rate set at each epoch's start as nnUNetv2_train does;
    # --first-seed picks a later seed alone, with the initial weights that seed had above
    out, poly = run(["engine", "--steps-per-epoch", "1", "--seeds", "1", "--first-seed", "1"], "c.csv")
    assert "seeds 1, same initial weights" in out and "poly learning rate over 2 epochs of 1 steps" in out
    assert {r["seed"] for r in poly} == {"1"}
    assert float(poly[0]["initial_weight_sum"]) == start["nnunet_in_process", "1"]
    assert [float(r["learning_rate"]) for r in poly] == pytest.approx([0.01, 0.01 * 0.5 ** 0.9])
    alone = subprocess.run([*command[:-4], "--steps-per-epoch", "50"], env=nnunet_tree.env(), capture_output=True,
                           text=True)
    assert alone.returncode != 0 and "with --train-steps" in alone.stderr
