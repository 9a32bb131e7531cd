"""Benchmark (issue 7): base regressor vs Hydranet with few training cases, on Task04_Hippocampus label volumes.

    python scripts/bench_hydra.py --data ../shared/data/Task04_Hippocampus --work /tmp/hydra_bench --json out.json

Converts the MSD task into ``--work`` (nnUNet_raw/preprocessed/results), plans and preprocesses 3d_fullres once,
and adds training subsets to nnU-Net's splits_final.json: fold 5, 6, ... train on the first 12 / 25 / 50 cases of a
seeded permutation of fold 0's training cases (nested subsets) and all validate on fold 0's 52 validation cases,
the held-out set of every run. Each (label, size, trainer) trains with the same budget, target volume:<label>,
then ICC(2,1), ICC(3,1), MSE and f(empty image) come from the fold's validation/regression_metrics.json. Trainings
run in this process (what ``nnUNetv2_train`` does, with ``--threads`` torch threads; the equivalent command is
printed); a finished run is reused, an interrupted one resumes, and a fold trained with another budget or seed
is refused rather than reported as this one. Results of each label go to their own nnUNet_results folder
(results_volume_<label>), since the label is not part of nnU-Net's folder names. ``--plot`` draws the validation
ICC(2,1) of every epoch (nnU-Net's log keeps it as the pseudo Dice), base against Hydranet per label and size.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from nnunet_autoaug.pipeline import NnUNetTree, import_msd_task
from nnunet_autoaug.plots import matplotlib_defaults, plt
from nnunet_autoaug.regression.targets import TARGET_VAR

SPLIT_SEED = 12345  # nnU-Net's default folds; fold 0's validation cases are the held-out set
FIRST_SUBSET_FOLD = 5
BUDGET_FILE = "bench_hydra_budget.txt"  # in the fold folder: the schedule and seed it was trained with


def subset_splits(tree: NnUNetTree, name: str, sizes: list[int], seed: int) -> dict[int, int]:
    """nnU-Net's 5 default folds plus one fold per training-set size; returns {size: fold index}."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    data = tree.preprocessed / name / "nnUNetPlans_3d_fullres"
    identifiers = sorted(infer_dataset_class(str(data)).get_identifiers(str(data)))
    default = [{"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))}
               for s in generate_crossval_split(identifiers, seed=SPLIT_SEED, n_splits=5)]
    order = np.random.RandomState(seed).permutation(default[0]["train"]).tolist()
    if max(sizes) > len(order):
        raise ValueError(f"--train-cases {max(sizes)} exceeds the {len(order)} training cases of fold 0")
    wanted = default + [{"train": sorted(order[:m]), "val": default[0]["val"]} for m in sizes]
    path = tree.preprocessed / name / "splits_final.json"
    if path.exists():
        existing = json.loads(path.read_text())
        if existing[:5] != default:
            raise ValueError(f"{path} does not start with nnU-Net's default folds; use a new --work folder")
        if existing != wanted and any(tree.root.glob(f"results_volume_*/{name}/*/fold_{f}")
                                      for f in range(FIRST_SUBSET_FOLD, len(existing))):
            raise ValueError(f"{path} holds other training subsets that were already trained on; use the same "
                             f"--train-cases/--seed or a new --work folder")
    path.write_text(json.dumps(wanted, indent=1))
    return {m: FIRST_SUBSET_FOLD + i for i, m in enumerate(sizes)}


def claim_fold(folder: Path, budget: str) -> None:
    """Stamp a fold folder with its budget, or refuse one trained with another: its figures would be misreported."""
    stamp = folder / BUDGET_FILE
    if stamp.is_file() and stamp.read_text() != budget:
        raise SystemExit(f"{folder} was trained with {stamp.read_text()}, not {budget}: use a new --work folder")
    if not stamp.is_file():
        if (folder / "checkpoint_final.pth").is_file():
            return  # trained before folders were stamped: its budget is unknown, as it always was
        folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(budget)


def icc_per_epoch(folder: Path) -> list[float]:
    """The validation ICC(2,1) of every epoch, from nnU-Net's logger in the final checkpoint (0 where undefined)."""
    import torch

    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    return [float(v) for v in checkpoint["logging"]["mean_fg_dice"]]


def run_one(tree: NnUNetTree, dataset_id: int, trainer_name: str, fold: int, label: int, args) -> dict:
    """Train (or resume, or reuse) one fold and return its validation metrics plus the wall time."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.run.run_training import maybe_load_checkpoint

    module = importlib.import_module("nnunet_autoaug.trainers.nnUNetTrainerHydra")  # the module, not the class
    results = tree.root / f"results_volume_{label}"
    env = tree.env(nnUNet_results=str(results), **{TARGET_VAR: f"volume:{label}"},
                   nnUNet_autoaug_epochs=str(args.epochs), nnUNet_autoaug_iters=str(args.iters),
                   nnUNet_autoaug_seed=str(args.seed))
    os.environ.update({k: v for k, v in env.items() if k.startswith("nnUNet_")})
    name = tree.dataset_name(dataset_id)
    folder = results / name / f"{trainer_name}__nnUNetPlans__3d_fullres" / f"fold_{fold}"
    metrics_file = folder / "validation" / "regression_metrics.json"
    budget = f"nnUNet_autoaug_epochs={args.epochs} nnUNet_autoaug_iters={args.iters} nnUNet_autoaug_seed={args.seed}"
    command = (f"{TARGET_VAR}=volume:{label} {budget} nnUNetv2_train {dataset_id} 3d_fullres {fold} -tr {trainer_name} "
               f"-device {args.device}")
    print(f"\n=== {command}", flush=True)
    claim_fold(folder, budget)
    wall = None
    if not metrics_file.is_file():
        resume = (folder / "checkpoint_final.pth").is_file() or (folder / "checkpoint_latest.pth").is_file()
        plans = load_json(str(tree.preprocessed / name / "nnUNetPlans.json"))
        plans["continue_training"] = resume
        trainer = getattr(module, trainer_name)(plans, "3d_fullres", fold,
                                                load_json(str(tree.preprocessed / name / "dataset.json")),
                                                torch.device(args.device))
        start = time.time()
        maybe_load_checkpoint(trainer, resume, False)
        trainer.run_training()
        trainer.perform_actual_validation()
        wall = time.time() - start
    metrics = json.loads(metrics_file.read_text())
    keys = ("icc", "icc_consistency", "mse", "rmse", "bias", "pearson_r", "empty_image_prediction",
            "mean_abs_target", "n", "num_training_cases", "epochs_trained")
    return {"label": label, "trainer": trainer_name, "fold": fold, "command": command, "wall_s": wall,
            **{k: metrics.get(k) for k in keys}, "icc_per_epoch": icc_per_epoch(folder)}


@matplotlib_defaults  # the trainings ran in this process, and nnU-Net's logger restyles matplotlib globally
def plot_curves(runs: list[dict], path: Path) -> None:
    """Validation ICC(2,1) per epoch, one panel per label and training-set size, base against Hydranet."""
    panels = sorted({(r["label"], r["num_training_cases"]) for r in runs})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False, sharey=True)
    for ax, (label, cases) in zip(axes[0], panels):
        for r in runs:
            if (r["label"], r["num_training_cases"]) == (label, cases):
                ax.plot(range(len(r["icc_per_epoch"])), r["icc_per_epoch"], label=r["trainer"])
        ax.set(title=f"volume:{label}, {cases} training cases", xlabel="epoch")
        ax.axhline(0, color="grey", linewidth=0.5)
    axes[0][0].set_ylabel("validation ICC(2,1)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(runs: list[dict]) -> str:
    header = ("| label | training cases | trainer | ICC(2,1) | ICC(3,1) | RMSE (mm^3) | bias (mm^3) | f(empty) (mm^3) "
              "| mean volume (mm^3) | wall (s) |")
    lines = [header, "|" + "---|" * 10]
    for r in runs:
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] else "reused"
        lines.append(f"| {r['label']} | {r['num_training_cases']} | {r['trainer']} | {r['icc']:.3f} | "
                     f"{r['icc_consistency']:.3f} | {r['rmse']:.1f} | {r['bias']:.1f} | "
                     f"{r['empty_image_prediction']:.1f} | {r['mean_abs_target']:.1f} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="MSD task folder (Task04_Hippocampus)")
    parser.add_argument("--work", type=Path, required=True, help="work folder for the nnU-Net tree and results")
    parser.add_argument("--labels", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-cases", type=int, nargs="+", default=[12, 25, 50])
    parser.add_argument("--small", action="store_true", help="the *_small trainers (input pooled x2, 8-16-32 "
                                                             "channels): for CPUs")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--iters", type=int, default=100, help="iterations per epoch (8 images each)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed and training-subset permutation")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--plot", type=Path, help="PNG of the validation ICC per epoch, base against Hydranet")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tree = NnUNetTree(args.work.resolve())
    dataset_id = import_msd_task(tree, args.data.resolve())
    if not list(tree.preprocessed.glob(f"Dataset{dataset_id:03d}_*/nnUNetPlans_3d_fullres")):
        tree.plan_and_preprocess(dataset_id, ("3d_fullres",))
    folds = subset_splits(tree, tree.dataset_name(dataset_id), args.train_cases, args.seed)
    suffix = "_small" if args.small else ""
    trainers = [f"nnUNetTrainerRegression{suffix}", f"nnUNetTrainerHydra{suffix}"]
    runs = [run_one(tree, dataset_id, t, folds[m], label, args)
            for label in args.labels for m in args.train_cases for t in trainers]
    print("\n" + markdown(runs))
    deltas = {f"volume:{r['label']}, {r['num_training_cases']} cases": h["icc"] - r["icc"]
              for r, h in zip(runs[::2], runs[1::2])}
    print("ICC(2,1) Hydranet - base: " + ", ".join(f"{k}: {v:+.3f}" for k, v in deltas.items()))
    if args.json:
        report = {"budget": {"epochs": args.epochs, "iters_per_epoch": args.iters, "images_per_step": 8,
                             "threads": args.threads, "device": args.device, "seed": args.seed,
                             "trainers": trainers},
                  "held_out": "nnU-Net's fold 0 validation cases", "machine": platform.platform(),
                  "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "runs": runs,
                  "icc_delta_hydra_minus_base": deltas}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(runs, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
