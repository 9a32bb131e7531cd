"""Repeated short trainings of several trainers, to tell a trainer's effect from run-to-run randomness.

    python scripts/replicate_study.py --tree /work/bench_hippo/nnunet --work /work/replicates --dataset 4 \
        --fold 5 --plans nnUNetPlans_bs2 --epochs 6 --replicates 4 nnUNetTrainerScheduled nnUNetTrainerPolicy \
        spatial=nnUNetTrainerPolicy,nnUNet_autoaug_policy=/path/spatial.json

``--tree`` is an nnU-Net folder tree (nnUNet_raw, nnUNet_preprocessed), e.g. the benchmark's ``WORK/nnunet``.

Each run trains straight through ``nnUNetv2_train`` (nnU-Net's final validation on the fold's validation cases
included) into a results folder of its own, with one thread and one data worker, ``--parallel`` runs at a time.
Runs are queued replicate by replicate, so runs that share the machine belong to different trainers and machine
noise hits all trainers alike. Finished runs are skipped on a rerun. The summary (``study.md``, ``study.csv``) gives
per run the train loss of the first and last epoch, the first epoch in which every class's pseudo Dice exceeds 0.5
and nnU-Net's validation Dice; per trainer the epochs it trained, the spread and the number of stalled runs; and a
Mann-Whitney U test of each trainer against the first one.

``--paired-init`` starts replicate i of every arm from the same initial weights (``nnUNet_autoaug_init_seed=i``, read
by every trainer of this package, the ``*Scheduled`` stock ones included); the runs then differ only in their
augmentation and data order, and the trainers are compared pair by pair (Wilcoxon signed-rank) instead.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu, wilcoxon

from nnunet_autoaug.benchmark.protocol import Budget
from nnunet_autoaug.pipeline import NnUNetTree, console_script
from nnunet_autoaug.settings import INIT_SEED_VAR


@dataclass(frozen=True)
class Arm:
    label: str
    trainer: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> "Arm":
        """``TRAINER`` or ``LABEL=TRAINER[,VAR=VALUE...]``."""
        head, *settings = spec.split(",")
        label, _, trainer = head.rpartition("=")
        env = dict(s.split("=", 1) for s in settings if "=" in s)
        if len(env) != len(settings) or not trainer:
            raise SystemExit(f"{spec!r}: expected TRAINER or LABEL=TRAINER[,VAR=VALUE...]")
        return cls(label or trainer, trainer, env)


def summary_file(run_dir: Path) -> Path | None:
    found = sorted(run_dir.glob("results/*/*/fold_*/validation/summary.json"))
    return found[0] if found else None


def launch(arm: Arm, replicate: int, run_dir: Path, args: argparse.Namespace) -> subprocess.Popen:
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    budget = Budget(epochs=args.epochs, iters=args.iters, val_iters=args.val_iters)
    paired = {INIT_SEED_VAR: str(replicate)} if args.paired_init else {}
    settings = {"nnUNet_results": str(run_dir / "results"), "OMP_NUM_THREADS": "1", "nnUNet_n_proc_DA": "1",
                **budget.env(), **paired, **arm.env}  # an arm may override any of these
    env = NnUNetTree(Path(args.tree)).env(**settings)
    command = [console_script("nnUNetv2_train"), str(args.dataset), args.configuration, str(args.fold),
               "-tr", arm.trainer, "-p", args.plans, "-device", "cpu", "--disable_checkpointing"]
    shown = " ".join(f"{k}={v}" for k, v in {**paired, **arm.env}.items())
    (run_dir / "command.txt").write_text(f"{shown} nnUNetv2_train {' '.join(command[1:])}".strip() + "\n")
    with open(run_dir / "train.out", "w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_all(arms: list[Arm], args: argparse.Namespace) -> None:
    queue = [(arm, i, Path(args.work) / arm.label / f"r{i}") for i in range(args.replicates) for arm in arms]
    queue = [(arm, i, d) for arm, i, d in queue if summary_file(d) is None]
    running: list[tuple[Arm, Path, subprocess.Popen, float]] = []
    while queue or running:
        while queue and len(running) < args.parallel:
            arm, replicate, run_dir = queue.pop(0)
            print(f"start {arm.label} {run_dir.name}", flush=True)
            running.append((arm, run_dir, launch(arm, replicate, run_dir, args), time.time()))
        time.sleep(5)
        for item in [r for r in running if r[2].poll() is not None]:
            arm, run_dir, process, start = item
            running.remove(item)
            state = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode}, see train.out)"
            print(f"{state} {arm.label} {run_dir.name} after {(time.time() - start) / 60:.1f} min", flush=True)


def read_run(run_dir: Path) -> dict | None:
    summary = summary_file(run_dir)
    if summary is None:
        return None
    log = sorted(summary.parent.parent.glob("training_log_*.txt"))[-1].read_text()
    losses = [float(v) for v in re.findall(r"train_loss (-?[\d.]+)", log)]
    pseudo = [[float(v) for v in re.findall(r"\d*\.\d+|\d+", line.replace("np.float32", ""))]
              for line in re.findall(r"Pseudo dice (.*)", log)]
    learned = next((epoch for epoch, dice in enumerate(pseudo) if dice and min(dice) > 0.5), None)
    per_class = json.loads(summary.read_text())["mean"]
    dice = [per_class[c]["Dice"] for c in sorted(per_class, key=lambda c: (len(c), c))]
    seeded = re.search(r"sum of the initial weights (-?[\d.]+)", log)  # logged when INIT_SEED_VAR is set
    return {"epochs": len(losses), "loss_first": losses[0], "loss_last": losses[-1], "learned_from": learned,
            "dice": dice, "dice_mean": float(np.mean(dice)), "weight_sum": float(seeded[1]) if seeded else None}


def compare(runs: dict[int, dict], reference: dict[int, dict], key: str, paired: bool) -> str:
    """p-value against the reference arm: pair by pair over the replicates both finished, else unpaired."""
    if paired:
        both = sorted(set(runs) & set(reference))
        if len(both) < 2:
            return "-"
        return f"{wilcoxon([runs[i][key] for i in both], [reference[i][key] for i in both]).pvalue:.2g}"
    if min(len(runs), len(reference)) < 2:
        return "-"
    return f"{mannwhitneyu([r[key] for r in runs.values()], [r[key] for r in reference.values()]).pvalue:.2g}"


def shown(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(arms: list[Arm], args: argparse.Namespace) -> str:
    rows, by_arm, unfinished = [], {}, []
    for arm in arms:
        for i in range(args.replicates):
            run_dir = Path(args.work) / arm.label / f"r{i}"
            run = read_run(run_dir)
            if run is not None:
                rows.append({"arm": arm.label, "replicate": i, **run})
                by_arm.setdefault(arm.label, {})[i] = run
            elif (run_dir / "train.out").exists():  # crashed or still running: say so, rerunning retries it
                unfinished.append(f"{arm.label} r{i}")
    if not rows:
        raise SystemExit(f"no finished runs under {args.work} (a run is finished once nnU-Net's validation wrote "
                         f"its summary.json)")
    with open(Path(args.work) / "study.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "replicate", "epochs", "loss_first_epoch", "loss_last_epoch",
                         "both_above_0.5_from_epoch", "dice_mean", "dice_per_class", "initial_weight_sum"])
        for r in rows:
            writer.writerow([r["arm"], r["replicate"], r["epochs"], r["loss_first"], r["loss_last"], r["learned_from"],
                             r["dice_mean"], " ".join(f"{d:.4f}" for d in r["dice"]), r["weight_sum"]])
    test = "Wilcoxon signed-rank over replicates" if args.paired_init else "Mann-Whitney U"
    lines = [f"{args.epochs} epochs x {args.iters} iterations (unless an arm sets its own nnUNet_autoaug_* "
             f"schedule: see the epochs column), fold {args.fold}, plans {args.plans}; "
             f"stalled: validation Dice mean < {args.stall_below}; initial weights "
             f"{'shared per replicate (' + INIT_SEED_VAR + ')' if args.paired_init else 'drawn per run'}; "
             f"p-values: {test} against the first arm", "",
             "| arm | run | train loss, first epoch | last epoch | every class > 0.5 from epoch | validation Dice | "
             "sum of initial weights |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['replicate']} | {r['loss_first']:.3f} | {r['loss_last']:.3f} | "
              f"{shown(r['learned_from'], 0)} | {r['dice_mean']:.4f} | {shown(r['weight_sum'], 4)} |" for r in rows]
    lines += ["", "| arm | runs | epochs | validation Dice median (min-max) | stalled | first-epoch loss median | "
              "vs first arm: Dice p | loss p |", "|---|---|---|---|---|---|---|---|"]
    reference = by_arm.get(arms[0].label, {})
    for label, runs in by_arm.items():
        dice, loss = [r["dice_mean"] for r in runs.values()], [r["loss_first"] for r in runs.values()]
        tests = ["-", "-"] if label == arms[0].label else \
            [compare(runs, reference, key, args.paired_init) for key in ("dice_mean", "loss_first")]
        epochs = "/".join(str(e) for e in sorted({r["epochs"] for r in runs.values()}))
        lines.append(f"| {label} | {len(runs)} | {epochs} | {np.median(dice):.4f} ({min(dice):.4f}-{max(dice):.4f}) | "
                     f"{sum(d < args.stall_below for d in dice)} | {np.median(loss):.3f} | {tests[0]} | {tests[1]} |")
    unpaired = [str(i) for i in range(args.replicates)
                if len({runs[i]["weight_sum"] for runs in by_arm.values() if i in runs}) > 1]
    if args.paired_init and unpaired:  # e.g. an arm with another architecture: its pairs are not like for like
        lines += ["", f"Replicates whose arms started from different initial weights: {', '.join(unpaired)}"]
    if unfinished:
        lines += ["", f"Started but unfinished (crashed or running; see their train.out): {', '.join(unfinished)}"]
    text = "\n".join(lines) + "\n"
    (Path(args.work) / "study.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="+", help="TRAINER or LABEL=TRAINER[,VAR=VALUE...]; the first is the reference")
    parser.add_argument("--tree", required=True, help="nnU-Net tree with nnUNet_raw and nnUNet_preprocessed "
                        "(plans and split), e.g. the benchmark's WORK/nnunet")
    parser.add_argument("--work", required=True, help="folder of the study's runs and summary")
    parser.add_argument("--dataset", default="4")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--fold", default="5")
    parser.add_argument("--plans", default="nnUNetPlans_bs2")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--val-iters", type=int, default=10)
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--stall-below", type=float, default=0.75)
    parser.add_argument("--paired-init", action="store_true", help=f"replicate i of every arm starts from the same "
                        f"initial weights ({INIT_SEED_VAR}=i); compare pair by pair")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    arms = [Arm.parse(spec) for spec in args.arms]
    tree = NnUNetTree(Path(args.tree))
    if not args.report_only and not (tree.raw.is_dir() and tree.preprocessed.is_dir()):
        parser.error(f"--tree {args.tree} lacks nnUNet_raw/ or nnUNet_preprocessed/: give the folder that holds "
                     f"both (the benchmark's WORK/nnunet), after nnUNetv2_plan_and_preprocess")
    if len({a.label for a in arms}) != len(arms):
        parser.error("arm labels must differ: name repeated trainers LABEL=TRAINER")
    if not args.report_only:
        run_all(arms, args)
    print(report(arms, args))


if __name__ == "__main__":
    main()
