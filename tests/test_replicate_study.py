"""scripts/replicate_study.py: every arm trained in its own tree under --work, finished runs skipped, crashed ones
reported, and initial weights shared per replicate with --paired-init."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.settings import INIT_SEED_VAR


def test_replicate_study_trains_every_arm_then_skips_finished_runs(nnunet_tree: NnUNetTree, tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "replicate_study.py"
    work = tmp_path / "study"
    command = [sys.executable, str(script), "--tree", str(nnunet_tree.root), "--work", str(work), "--dataset", "990",
               "--fold", "0", "--plans", "nnUNetPlans", "--epochs", "1", "--iters", "2", "--val-iters", "1",
               "--replicates", "1", "nnUNetTrainerScheduled",
               "mirror=nnUNetTrainerPolicy,nnUNet_autoaug_policy=mirror_only"]
    results_before = sorted(p.name for p in nnunet_tree.results.rglob("*"))
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert out.count("start ") == 2 and out.count("done ") == 2, out
    assert "nnUNet_autoaug_policy=mirror_only" in (work / "mirror" / "r0" / "command.txt").read_text()
    policy_logs = list((work / "mirror" / "r0" / "results").rglob("training_log_*.txt"))
    assert len(policy_logs) == 1 and "(mirror_only, space 'rl')" in policy_logs[0].read_text()
    with open(work / "study.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["arm"] for r in rows] == ["nnUNetTrainerScheduled", "mirror"]
    for row in rows:
        assert 0 <= float(row["dice_mean"]) <= 1 and np.isfinite(float(row["loss_first_epoch"]))
        assert row["epochs"] == "1"  # the epochs each run trained, as in study.md
    summary = (work / "study.md").read_text()
    assert "| mirror | 1 | 1 |" in summary and "| nnUNetTrainerScheduled | 0 |" in summary  # runs, epochs trained
    assert sorted(p.name for p in nnunet_tree.results.rglob("*")) == results_before  # runs write under --work only

    rerun = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "start " not in rerun and "| mirror | 1 |" in rerun
    (work / "mirror" / "r1").mkdir()
    (work / "mirror" / "r1" / "train.out").write_text("Traceback: a crashed run\n")
    with_crash = subprocess.run([*command, "--report-only", "--replicates", "2"], capture_output=True, text=True,
                                check=True).stdout
    assert "unfinished (crashed or running; see their train.out): mirror r1" in with_crash
    bad = subprocess.run([*command[:-1], "mirror=nnUNetTrainerPolicy,policy"], capture_output=True, text=True)
    assert bad.returncode != 0 and "LABEL=TRAINER[,VAR=VALUE...]" in bad.stderr
    empty = subprocess.run([*command[:5], str(tmp_path / "empty"), "--report-only", "nnUNetTrainerScheduled"],
                           capture_output=True, text=True)
    assert empty.returncode != 0 and "no finished runs" in empty.stderr
    no_tree = subprocess.run([*command[:3], str(tmp_path), *command[4:]], capture_output=True, text=True)
    assert no_tree.returncode != 0 and "lacks nnUNet_raw/ or nnUNet_preprocessed/" in no_tree.stderr
    assert all(row["initial_weight_sum"] == "" for row in rows)  # unpaired: each run drew its own weights

    paired = tmp_path / "paired"
    subprocess.run([*command[:5], str(paired), *command[6:], "--paired-init"], capture_output=True, text=True,
                   check=True)
    assert f"{INIT_SEED_VAR}=0" in (paired / "mirror" / "r0" / "command.txt").read_text()
    with open(paired / "study.csv", newline="") as f:
        sums = {row["arm"]: row["initial_weight_sum"] for row in csv.DictReader(f)}
    assert sums["mirror"] == sums["nnUNetTrainerScheduled"] != "", sums  # the stock and our trainer start alike
    assert "shared per replicate" in (paired / "study.md").read_text()
