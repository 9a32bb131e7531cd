"""One trial of the strategy search: train nnU-Net in this process with nnUNetTrainerStrategy, report the Dice on the
search split.

The trial's nnU-Net output lives under ``<trials_dir>/<trial_id>/`` (shared storage on a cluster), so a trial that
Ray retries or restores under the same id picks up its own ``checkpoint_latest.pth`` (or returns its cached result)
instead of training from scratch. Works without Ray too (``train_strategy``), which the tests use.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.rl.strategy import DIMENSIONS, LR_RANGE, STRATEGY_VAR, Strategy

RESULT_FILE, TRAINER = "result.json", "nnUNetTrainerStrategy"
CRASH_VAR = "nnUNet_autoaug_rl_crash_once"  # tests: path of a marker file; the first trial to see it missing dies


def apply_environment(setup: dict) -> None:
    os.environ.update(setup.get("env", {}))
    if not setup.get("gpus"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # Ray leaves it unset for zero-GPU trials: they would see every GPU


def _output_folder(setup: dict) -> Path:
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    return Path(get_output_folder(setup["dataset"], TRAINER, setup["plans"], setup["configuration"], setup["fold"]))


def train_strategy(strategy: Strategy, trial_dir: Path, setup: dict, report: Callable[[dict], None] | None = None,
                   restore_from: Path | None = None, pbt: bool = False) -> dict:
    """Train (or continue, or return the cached result of) one trial; the final result has ``final: True``."""
    report = report or (lambda metrics: None)
    trial_dir = Path(trial_dir)
    result_file = trial_dir / RESULT_FILE
    if result_file.is_file() and not pbt:
        result = json.loads(result_file.read_text())
        report({**result, "cached": True})
        return result
    trial_dir.mkdir(parents=True, exist_ok=True)
    strategy.save(trial_dir / "strategy.json")
    apply_environment(setup)
    os.environ["nnUNet_results"] = str(trial_dir / "nnUNet_results")  # nnU-Net 2.8 reads its paths lazily
    os.environ[STRATEGY_VAR] = str(trial_dir / "strategy.json")

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from nnunet_autoaug.trainers.nnUNetTrainerStrategy import nnUNetTrainerStrategy

    base = Path(nnUNet_preprocessed) / setup["dataset"]
    plans, dataset_json = load_json(str(base / f"{setup['plans']}.json")), load_json(str(base / "dataset.json"))
    out = _output_folder(setup)
    if restore_from is not None:  # PBT: continue from another trial's (or our own) reported checkpoint
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoint_final.pth").unlink(missing_ok=True)
        shutil.copy(restore_from, out / "checkpoint_latest.pth")
    checkpoint = next((out / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth") if (out / n).is_file()), None)
    plans["continue_training"] = checkpoint is not None
    use_gpu = bool(setup.get("gpus")) and torch.cuda.is_available()
    trainer = nnUNetTrainerStrategy(plans, setup["configuration"], setup["fold"], dataset_json,
                                    torch.device("cuda" if use_gpu else "cpu"))
    trainer.search_fraction = setup.get("search_fraction", 0.2)
    trainer.strategy_may_change = pbt
    crash_marker = os.environ.get(CRASH_VAR)

    def on_epoch(t: nnUNetTrainerStrategy) -> None:
        if crash_marker and not os.path.exists(crash_marker) and t.current_epoch == 1:
            Path(crash_marker).write_text(f"{trial_dir.name}\n")
            os._exit(1)  # like an OOM kill: no exception, no cleanup
        fresh = t.search_dice_history and t.search_dice_history[-1][0] == t.current_epoch - 1
        if setup.get("report_every_epoch") and fresh:
            metrics = {"dice": t.search_dice, "epoch": t.current_epoch, "final": False}
            if pbt:
                with tempfile.TemporaryDirectory() as tmp:
                    # nnU-Net saves before it counts the epoch as done (and stores epoch + 1): do the same
                    t.current_epoch -= 1
                    try:
                        t.save_checkpoint(os.path.join(tmp, "checkpoint_latest.pth"))
                    finally:
                        t.current_epoch += 1
                    from ray import tune

                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            else:
                report(metrics)

    trainer.epoch_callback = on_epoch
    if setup.get("report_every_epoch"):
        trainer.search_dice_every = 1
    start = time.time()
    if checkpoint is not None:
        trainer.load_checkpoint(str(checkpoint))
    elif setup.get("pretrained"):
        trainer.initialize()
        load_pretrained_weights(trainer.network, setup["pretrained"], verbose=False)
    resumed_from = trainer.current_epoch
    trainer.run_training()
    result = {"dice": float(trainer.search_dice), "final": True, "epochs": trainer.current_epoch,
              "resumed_from_epoch": resumed_from, "train_seconds": round(time.time() - start, 2),
              "output_folder": str(out), **{f"strategy/{k}": v for k, v in strategy.to_config().items()}}
    write_text_atomically(result_file, json.dumps(result, indent=2))  # a retry reads it back
    report(result)
    return result


def strategy_trial(config: dict, setup: dict) -> None:
    """Ray Tune function trainable (searcher modes and ASHA)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    train_strategy(Strategy.from_config(config), Path(setup["trials_dir"]) / trial_id, setup, tune.report)


def pbt_trial(config: dict, setup: dict) -> None:
    """Ray Tune function trainable for PBT: per-epoch Dice with a checkpoint; exploited trials restart from the
    donor's checkpoint with a mutated strategy."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    setup = {**setup, "report_every_epoch": True}
    strategy = clipped_strategy(config)  # PBT's explore step multiplies values by 0.8/1.2 and may leave the range
    if checkpoint is None:
        train_strategy(strategy, Path(setup["trials_dir"]) / trial_id, setup, tune.report, pbt=True)
        return
    with checkpoint.as_directory() as d:
        local = Path(tempfile.mkdtemp()) / "checkpoint_latest.pth"
        shutil.copy(Path(d) / "checkpoint_latest.pth", local)
    train_strategy(strategy, Path(setup["trials_dir"]) / trial_id, setup, tune.report, restore_from=local, pbt=True)


def clipped_strategy(config: dict) -> Strategy:
    values = {d: min(max(float(config[d]), 0.0), 1.0) for d in DIMENSIONS[:-1]}
    return Strategy.from_config({**values, "lr": min(max(float(config["lr"]), LR_RANGE[0]), LR_RANGE[1])})
