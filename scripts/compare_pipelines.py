"""Compare the training batches of nnU-Net's own augmentation pipeline with nnUNetTrainerPolicy's (our engine).

    python scripts/compare_pipelines.py --preprocessed WORK/nnunet/nnUNet_preprocessed \
        --dataset Dataset004_Hippocampus --plans nnUNetPlans_bs2 --fold 5 --batches 40 [--policy nnunet_default]

Both trainers are built as nnUNetv2_train builds them, on the CPU, with their results in a temporary folder. For
each, N training batches are drawn exactly as training draws them (nnU-Net's loader and transforms for
nnUNetTrainerScheduled; nnU-Net's loader, then the policy on our engine for nnUNetTrainerPolicy) and summarised:
share of voxels of each label in the full-resolution target, image mean and std, and how many cases the batches
came from. Matching figures mean the network sees the same distribution of inputs from both pipelines.

``--train-steps N --seeds K`` instead trains: per seed, every arm starts from the same initial weights (those of
``nnUNet_autoaug_init_seed=seed``, so a full run with that seed starts alike) and takes N training steps (nnU-Net's
train_step, epoch-0 learning rate), and the summary compares their train losses, paired by seed (Wilcoxon
signed-rank against the first arm). ``--steps-per-epoch E`` follows nnU-Net's schedule instead: the steps form N / E
epochs of E steps and the learning rate decays by nnU-Net's poly rule, set at each epoch's start as
``nnUNetv2_train`` sets it (the per-step CSV records the rate of every step). The arms swap one difference between
the two pipelines at a time: where the augmentation runs (nnU-Net's worker or the training process), the crop the
loader cuts, and the augmentation code itself:

    python scripts/compare_pipelines.py ... --train-steps 50 --seeds 6 --arms nnunet engine nnunet_in_process
    python scripts/compare_pipelines.py ... --train-steps 300 --steps-per-epoch 50 --first-seed 6 --seeds 1
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
from pathlib import Path

import numpy as np

TRAINERS = ("nnUNetTrainerScheduled", "nnUNetTrainerPolicy")
ARMS = {  # label -> (trainer, whose loader crop (None: its own), nnU-Net data workers: 0 = in the training process)
    "nnunet": ("nnUNetTrainerScheduled", None, 1),
    "nnunet_in_process": ("nnUNetTrainerScheduled", None, 0),
    "nnunet_engine_crop": ("nnUNetTrainerScheduled", "nnUNetTrainerPolicy", 1),
    "engine": ("nnUNetTrainerPolicy", None, 1),
    "engine_nnunet_crop": ("nnUNetTrainerPolicy", "nnUNetTrainerScheduled", 1),
}


def batch_stats(trainer_name: str, dataset_folder: Path, plans_name: str, fold: int, batches: int) -> dict[str, object]:
    import torch

    from nnunet_autoaug.pipeline import build_trainer

    trainer = build_trainer(trainer_name, dataset_folder, "3d_fullres", torch.device("cpu"), fold, plans_name)
    loader = trainer.dataloader_train
    rows, keys = [], set()
    for _ in range(batches):
        batch = next(loader)
        keys.update(batch["keys"])
        data, target = trainer.augment(batch) if hasattr(trainer, "augment") else (batch["data"], batch["target"])
        seg = target[0] if isinstance(target, list) else target
        rows.append([data.mean().item(), data.std().item()]
                    + [(seg == label).float().mean().item() for label in trainer.label_manager.foreground_labels])
    finish_workers(trainer)
    mean = np.mean(rows, axis=0)
    labels = {f"label {lab}": round(float(v), 4) for lab, v in zip(trainer.label_manager.foreground_labels, mean[2:])}
    return {"image mean": round(float(mean[0]), 3), "image std": round(float(mean[1]), 3), **labels,
            "cases seen": len(keys)}


def finish_workers(trainer) -> None:  # noqa: ANN001
    for worker_loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(worker_loader, "_finish"):  # nnU-Net's background workers
            worker_loader._finish()


def loader_crop(trainer_name: str, dataset_folder: Path, plans_name: str, fold: int) -> tuple[int, ...]:
    import torch

    from nnunet_autoaug.pipeline import build_trainer

    trainer = build_trainer(trainer_name, dataset_folder, "3d_fullres", torch.device("cpu"), fold, plans_name,
                            with_loaders=False)
    return tuple(int(v) for v in trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()[2])


def train_arm(arm: str, crops: dict[str, tuple[int, ...]], seed: int, steps: int, dataset_folder: Path,
              plans_name: str, fold: int, steps_per_epoch: int = 0) -> tuple[list[float], list[float], float]:
    """``steps`` training steps of one arm from the initial weights of ``seed``, the same weights a full run with
    ``nnUNet_autoaug_init_seed=seed`` starts from: their losses, each step's learning rate, and the sum of the
    initial weights, which shows that the arms of a seed started alike. ``steps_per_epoch`` > 0: nnU-Net's poly
    learning rate over ``steps / steps_per_epoch`` epochs (the trainers read that schedule from the environment)."""
    import torch

    from nnunet_autoaug.pipeline import build_trainer
    from nnunet_autoaug.settings import INIT_SEED_VAR, SEED_VAR

    trainer_name, crop_of, workers = ARMS[arm]
    os.environ.update({"nnUNet_n_proc_DA": str(workers), SEED_VAR: str(seed), INIT_SEED_VAR: str(seed)})
    torch.manual_seed(seed)  # the training's own draws (the initial weights have their own seeded stream)
    trainer = build_trainer(trainer_name, dataset_folder, "3d_fullres", torch.device("cpu"), fold, plans_name,
                            with_loaders=False)
    if crop_of is not None:
        own = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size

        def with_other_crop() -> tuple:
            rotation, dummy_2d, _, mirror_axes = own()
            return rotation, dummy_2d, crops[crop_of], mirror_axes
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size = with_other_crop
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    np.random.seed(seed)  # in-process draws (loader and nnU-Net's transforms without workers)
    losses, rates = [], []
    for step in range(steps):
        if steps_per_epoch and step % steps_per_epoch == 0:
            trainer.lr_scheduler.step(step // steps_per_epoch)  # as nnU-Net's on_train_epoch_start
        rates.append(float(trainer.optimizer.param_groups[0]["lr"]))
        losses.append(float(trainer.train_step(next(trainer.dataloader_train))["loss"]))
    finish_workers(trainer)
    return losses, rates, trainer.initial_weight_sum


def early_learning(arms: list[str], seeds: list[int], steps: int, dataset_folder: Path, plans_name: str, fold: int,
                   csv_path: Path | None, steps_per_epoch: int = 0) -> str:
    from scipy.stats import wilcoxon

    epochs = -(-steps // steps_per_epoch) if steps_per_epoch else 1
    if steps_per_epoch:  # the trainers' own schedule, so their poly scheduler decays over these epochs
        os.environ.update(nnUNet_autoaug_epochs=str(epochs), nnUNet_autoaug_iters=str(steps_per_epoch))
    crops = {name: loader_crop(name, dataset_folder, plans_name, fold) for name in TRAINERS}
    losses: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    rates: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    weight_sums: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in seeds:
        for arm in arms:
            run, run_rates, weight_sum = train_arm(arm, crops, seed, steps, dataset_folder, plans_name, fold,
                                                   steps_per_epoch)
            losses[arm].append(run)
            rates[arm].append(run_rates)
            weight_sums[arm].append(weight_sum)
            print(f"seed {seed} {arm}: mean train loss {np.mean(run):.4f}, last 10 steps {np.mean(run[-10:]):.4f}",
                  flush=True)
    if csv_path is not None:
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["arm", "seed", "step", "train_loss", "learning_rate", "initial_weight_sum"])
            writer.writerows([arm, seeds[i], step, loss, rates[arm][i][step], weight_sums[arm][i]] for arm in arms
                             for i, run in enumerate(losses[arm]) for step, loss in enumerate(run))
    schedule = (f"nnU-Net's poly learning rate over {epochs} epochs of {steps_per_epoch} steps" if steps_per_epoch
                else "epoch 0's learning rate throughout")
    lines = [f"{steps} training steps per arm and seed, seeds {', '.join(map(str, seeds))}, same initial weights per "
             f"seed, {schedule}; loader crops: " + ", ".join(f"{name} {crop}" for name, crop in crops.items()), "",
             "| arm | trainer, crop, workers | mean train loss, median over seeds | last 10 steps | "
             f"vs {arms[0]}: lower in | Wilcoxon p |", "|---|---|---|---|---|---|"]
    reference = np.array([np.mean(run) for run in losses[arms[0]]])
    for arm in arms:
        means = np.array([np.mean(run) for run in losses[arm]])
        last = [np.mean(run[-10:]) for run in losses[arm]]
        lower, p = "-", "-"
        if arm != arms[0]:
            lower = f"{int(np.sum(means < reference))} of {len(seeds)}"
            p = f"{wilcoxon(means, reference).pvalue:.2g}" if len(seeds) > 1 else "-"
        trainer_name, crop_of, workers = ARMS[arm]
        lines.append(f"| {arm} | {trainer_name}, {crops[crop_of or trainer_name]}, {workers} | "
                     f"{np.median(means):.4f} | {np.median(last):.4f} | {lower} | {p} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocessed", type=Path, required=True, help="nnUNet_preprocessed folder")
    parser.add_argument("--dataset", required=True, help="e.g. Dataset004_Hippocampus")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--policy", default="nnunet_default", help="preset or policy JSON for nnUNetTrainerPolicy")
    parser.add_argument("--train-steps", type=int, default=0, help="train instead: steps per arm and seed")
    parser.add_argument("--seeds", type=int, default=6, help="with --train-steps: how many seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="with --train-steps: seeds FIRST..FIRST+SEEDS-1 (replicate_study.py's pair i used seed i)")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=["nnunet", "engine"],
                        help="with --train-steps; the first is the reference")
    parser.add_argument("--csv", type=Path, help="with --train-steps: per-step losses")
    parser.add_argument("--steps-per-epoch", type=int, default=0,
                        help="with --train-steps: nnU-Net's poly learning rate, decayed every this many steps "
                             "(e.g. 50: --train-steps 300 is a 6-epoch run's schedule); 0: epoch 0's rate")
    args = parser.parse_args(argv)
    if len(set(args.arms)) != len(args.arms):
        parser.error("--arms: each arm once")
    if args.steps_per_epoch < 0 or (args.steps_per_epoch and not args.train_steps):
        parser.error("--steps-per-epoch: a positive number of steps, with --train-steps")
    if args.seeds < 1 or args.first_seed < 0:
        parser.error("--seeds: at least 1; --first-seed: 0 or more")
    folder = args.preprocessed / args.dataset
    if not (folder / f"{args.plans}.json").is_file():
        raise SystemExit(f"{folder / (args.plans + '.json')} does not exist: pass the nnUNet_preprocessed folder of a "
                         f"planned and preprocessed dataset (e.g. the benchmark's WORK/nnunet/nnUNet_preprocessed).")
    with tempfile.TemporaryDirectory(prefix="compare_pipelines_") as results:  # the trainers' folders, then gone
        os.environ.update(nnUNet_preprocessed=str(args.preprocessed), nnUNet_autoaug_policy=args.policy,
                          nnUNet_results=results)
        os.environ.setdefault("nnUNet_raw", results)
        if args.train_steps > 0:
            seeds = list(range(args.first_seed, args.first_seed + args.seeds))
            print(early_learning(args.arms, seeds, args.train_steps, folder, args.plans, args.fold, args.csv,
                                 args.steps_per_epoch))
            return
        for trainer_name in TRAINERS:
            stats = batch_stats(trainer_name, folder, args.plans, args.fold, args.batches)
            print(f"{trainer_name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
