"""Paired comparison of trainers across benchmark runs (other sessions, seeds or machines) from their CSVs.

    python scripts/compare_runs.py A.csv:nnUNetTrainerScheduled B.csv:nnUNetTrainerScheduled [--regime full]

Each argument is a report's dice_per_case.csv and a trainer in it. Every pair is compared per case (Dice mean over
classes, Wilcoxon signed-rank), as the report compares trainers within one run. Two runs of the same trainer show
how much of a within-run difference training randomness alone produces.
"""
from __future__ import annotations

import argparse
import csv
import itertools
from pathlib import Path

import numpy as np

from nnunet_autoaug.benchmark.report import case_mean, paired


def load(source: str, regime: str) -> tuple[str, dict[str, dict[str, float]]]:
    path, _, trainer = source.rpartition(":")
    if not path or not Path(path).is_file():
        raise SystemExit(f"{source!r}: expected CSV_PATH:TRAINER with an existing dice_per_case.csv")
    dice: dict[str, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["trainer"] == trainer and row["regime"] == regime:
                dice.setdefault(row["case"], {})[row["class"]] = float(row["dice"])
    if not dice:
        raise SystemExit(f"{source!r}: no rows of trainer {trainer!r} in regime {regime!r}")
    return f"{trainer} ({path})", dice


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="CSV_PATH:TRAINER, at least two")
    parser.add_argument("--regime", default="full")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two CSV_PATH:TRAINER arguments")
    runs = [load(source, args.regime) for source in args.runs]
    cases = sorted(set.intersection(*(set(d) for _, d in runs)))
    for name, dice in runs:
        print(f"{np.nanmean(case_mean(dice, cases)):.4f}  {name}")
    for (name_a, a), (name_b, b) in itertools.combinations(runs, 2):
        result = paired(case_mean(a, cases), case_mean(b, cases))
        print(f"{name_a} - {name_b}: median paired diff {result['median_diff']:+.4f}, Wilcoxon p={result['p']:.2g}, "
              f"n={result['n']}")


if __name__ == "__main__":
    main()
