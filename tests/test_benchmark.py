"""The benchmark suite: folds and budget, paired statistics, and a tiny real run (train, predict, evaluate, report,
resume, crashed trainer, a repeated run, retraining a search's result) on the synthetic dataset."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest

from nnunet_autoaug.benchmark import report, runner
from nnunet_autoaug.benchmark.cli import main
from nnunet_autoaug.benchmark.protocol import ensure_splits, nnunet_fold, plans_identifier
from nnunet_autoaug.benchmark.runner import run_measured
from nnunet_autoaug.pipeline import NnUNetTree
from nnunet_autoaug.policy import Policy

BASELINES = Path(os.environ.get("nnUNet_autoaug_baselines", Path(__file__).resolve().parents[2] / "shared" / "data" /
                                "baselines_AutoNNUnet"))


@pytest.fixture
def tree_copy(nnunet_tree: NnUNetTree, tmp_path: Path) -> NnUNetTree:
    """The planned synthetic dataset in a tree of its own (these tests write splits and plans files)."""
    tree = NnUNetTree(tmp_path / "tree")
    shutil.copytree(nnunet_tree.preprocessed, tree.preprocessed, ignore=shutil.ignore_patterns("splits_final.json"))
    return tree


def test_splits_are_nnunets_default_folds_plus_fixed_low_data_folds(tree_copy: NnUNetTree) -> None:
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    name = tree_copy.dataset_name(990)
    folder = tree_copy.preprocessed / name
    os.environ.update(nnUNet_preprocessed=str(tree_copy.preprocessed), nnUNet_results=str(tree_copy.results))
    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    trainer = nnUNetTrainer(plans, "3d_fullres", 0, load_json(str(folder / "dataset.json")), torch.device("cpu"))
    trainer.do_split()  # nnU-Net writes its own default splits_final.json
    nnunet_splits = json.loads((folder / "splits_final.json").read_text())

    splits = ensure_splits(tree_copy, name, low_data_cases=4)
    assert splits[:5] == nnunet_splits and len(splits) == 10
    for fold in range(5):
        low = splits[nnunet_fold("lowdata", fold)]
        assert len(low["train"]) == 4 and set(low["train"]) < set(splits[fold]["train"])
        assert sorted(low["val"]) == sorted(splits[fold]["val"])
    assert ensure_splits(tree_copy, name, low_data_cases=4) == splits  # stable across runs
    assert ensure_splits(tree_copy, name, low_data_cases=3)[5]["train"] != splits[5]["train"]  # nothing trained yet

    bad = json.loads((tree_copy.preprocessed / name / "splits_final.json").read_text())
    bad[0]["val"], bad[1]["val"] = bad[1]["val"], bad[0]["val"]
    (tree_copy.preprocessed / name / "splits_final.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="default folds"):
        ensure_splits(tree_copy, name, low_data_cases=4)


def test_batch_size_plans_variant_changes_only_the_batch(tree_copy: NnUNetTree) -> None:
    name = tree_copy.dataset_name(990)
    assert plans_identifier(tree_copy, name, "3d_fullres", None) == "nnUNetPlans"
    identifier = plans_identifier(tree_copy, name, "3d_fullres", 1)
    original = json.loads((tree_copy.preprocessed / name / "nnUNetPlans.json").read_text())
    variant = json.loads((tree_copy.preprocessed / name / f"{identifier}.json").read_text())
    assert variant["configurations"]["3d_fullres"]["batch_size"] == 1
    variant["configurations"]["3d_fullres"]["batch_size"] = original["configurations"]["3d_fullres"]["batch_size"]
    assert variant.pop("plans_name") == identifier and original.pop("plans_name") == "nnUNetPlans"
    assert variant == original  # same data identifier: the preprocessed data is reused


def test_paired_statistics() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 30)
    better = report.paired(base + 0.05 + rng.normal(0, 0.01, 30), base)
    assert better["n"] == 30 and 0.04 < better["median_diff"] < 0.06 and better["p"] < 1e-4
    assert report.paired(base, base)["p"] == 1.0
    with_nan = base.copy()
    with_nan[0] = np.nan
    assert report.paired(with_nan, base)["n"] == 29


def test_compare_runs_pairs_trainers_across_report_csvs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                        load_script: Callable[[str], ModuleType]) -> None:
    compare_runs = load_script("compare_runs.py")
    rng = np.random.default_rng(0)
    base = rng.uniform(0.6, 0.9, 20)
    for name, shift in (("a.csv", 0.0), ("b.csv", 0.05)):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["regime", "trainer", "case", "class", "dice"])
            for i, value in enumerate(base + shift):
                for label in ("1", "2"):
                    writer.writerow(["full", "T", f"case_{i:03d}", label, f"{value:.6f}"])
                writer.writerow(["lowdata", "T", f"case_{i:03d}", "1", "0.1"])
    compare_runs.main([f"{tmp_path / 'a.csv'}:T", f"{tmp_path / 'b.csv'}:T"])
    out = capsys.readouterr().out
    assert "median paired diff -0.0500" in out and "n=20" in out
    assert float(re.search(r"p=([0-9.e-]+)", out).group(1)) < 1e-3
    with pytest.raises(SystemExit, match="no rows of trainer 'U'"):
        compare_runs.main([f"{tmp_path / 'a.csv'}:T", f"{tmp_path / 'a.csv'}:U"])


def test_repeated_runs_are_summarised_against_the_first_run() -> None:
    rng = np.random.default_rng(1)
    cases = [f"case_{i:03d}" for i in range(25)]
    first = {c: {"1": v, "2": v} for c, v in zip(cases, rng.uniform(0.6, 0.9, 25))}
    second = {c: {k: v + 0.03 for k, v in d.items()} for c, d in first.items()}
    dice = {"T": first, "T#2": second, "U": first}
    lines = report.repeat_lines(dice, cases)
    assert len([line for line in lines if line.startswith("- ")]) == 1  # U ran once: no spread to report
    line = next(line for line in lines if line.startswith("- T:"))
    mean = np.mean(report.case_mean(first, cases))
    assert f"{mean:.4f}, {mean + 0.03:.4f}" in line and "sd 0.0212" in line and "T#2 vs run 1: +0.0300" in line
    assert report.repeat_lines({"T": first}, cases) == []


def test_cost_ratio_is_against_the_fastest_run_of_the_reference() -> None:
    """A reference run slowed by a shared CPU must not make every other trainer look cheap."""
    cases = ["case_000", "case_001"]
    dice = {label: {c: {"1": 0.8} for c in cases} for label in ("R", "R#2", "T")}
    statuses = [{"trainer": "R", "label": "R", "state": "done", "sec_per_iter": 6.0},
                {"trainer": "R", "label": "R#2", "state": "done", "sec_per_iter": 1.0},
                {"trainer": "T", "label": "T", "state": "done", "sec_per_iter": 1.5},
                {"trainer": "U", "label": "U", "state": "failed", "sec_per_iter": None}]
    rows = {row["trainer"]: row for row in report.build_rows(statuses, dice, None, "R", cases)}
    assert rows["T"]["cost_vs_reference"] == pytest.approx(1.5)
    assert rows["R"]["cost_vs_reference"] == pytest.approx(6.0)  # the disturbed run shows as such
    assert "cost_vs_reference" not in rows["U"]

    # a run known to have shared the CPU is not the reference even when it is the fastest, and is marked
    statuses[1]["train"] = {"cpu_share": 0.4}
    statuses[0]["sec_per_iter"], statuses[0]["train"] = 3.0, {"cpu_share": 0.97}
    rows = report.build_rows(statuses, dice, None, "R", cases)
    assert next(r for r in rows if r["trainer"] == "T")["cost_vs_reference"] == pytest.approx(0.5)
    text = report.markdown([], {"lowdata": rows}, "R", [])
    assert "| 1.00 (CPU shared: 40% its own) |" in text and "| 3.00 |" in text
    statuses[0]["train"] = {"cpu_share": 0.5}  # no unshared run of the reference: the fastest of all
    rows = report.build_rows(statuses, dice, None, "R", cases)
    assert next(r for r in rows if r["trainer"] == "T")["cost_vs_reference"] == pytest.approx(1.5)


def test_peak_gpu_memory_is_read_from_the_trainings_and_reported(tmp_path: Path) -> None:
    from nnunet_autoaug.trainers.nnUNetTrainerScheduled import PEAK_GPU_MEMORY_FILE

    assert runner.PEAK_GPU_MEMORY_FILE == PEAK_GPU_MEMORY_FILE  # what the trainers write is what the suite reads
    assert runner.peak_gpu_memory_mib(tmp_path) is None and runner.peak_gpu_memory_mib(None) is None  # CPU runs
    (tmp_path / PEAK_GPU_MEMORY_FILE).write_text(json.dumps({"peak_allocated_mib": 5120.4, "device": "H200"}))
    assert runner.peak_gpu_memory_mib(tmp_path) == 5120.4
    cases = ["case_000"]
    statuses = [{"trainer": "R", "state": "done", "peak_gpu_mib": 5120.4}, {"trainer": "T", "state": "done"}]
    dice = {label: {"case_000": {"1": 0.8}} for label in ("R", "T")}
    text = report.markdown([], {"full": report.build_rows(statuses, dice, None, "R", cases)}, "R", [])
    assert "peak GPU MiB |" in text and text.count("| 5120 |") == 1
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 4 and len({line.count("|") for line in table}) == 1  # header, rule and rows align


def test_report_names_the_settings_a_run_was_given(tmp_path: Path) -> None:
    from nnunet_autoaug.policy import POLICY_FILE, PRESETS

    settings = runner.user_settings({"nnUNet_autoaug_policy": "/x/autoaug_policy.json", "nnUNet_autoaug_epochs": "20",
                                     "nnUNet_results": "/r", "nnUNet_autoaug_seed": "3"})
    assert settings == {"nnUNet_autoaug_policy": "/x/autoaug_policy.json", "nnUNet_autoaug_seed": "3"}  # no schedule
    PRESETS["mirror_only"].save(tmp_path / POLICY_FILE)
    status = {"trainer": "nnUNetTrainerPolicy", "state": "done", "output_folder": str(tmp_path), "settings": settings}
    line, = [x for x in report.search_outcomes([status], "lowdata", tmp_path) if x.startswith("- ")]
    assert line.startswith("- nnUNetTrainerPolicy: `") and line.endswith(
        " (set: `nnUNet_autoaug_policy=/x/autoaug_policy.json`, `nnUNet_autoaug_seed=3`)")


def test_measured_run_records_its_share_of_the_machines_cpu(tmp_path: Path) -> None:
    busy = "import time; t = time.process_time(); exec('while time.process_time() - t < 1: pass')"
    measured = run_measured([sys.executable, "-c", busy], dict(os.environ), tmp_path / "log.txt")
    assert measured.returncode == 0 and measured.wall_s >= 1
    # all of its CPU time is the machine's too; other work on the machine only lowers the share (on an idle
    # 2-core VM a busy loop measures about 1.0, beside one training job 0.49)
    assert 0 < measured.cpu_share <= 1.05


@pytest.mark.skipif(not (BASELINES / "ConvolutionalEncoder").is_dir(), reason=f"baselines not found at {BASELINES}")
def test_published_baseline_is_read_per_case() -> None:
    dice = report.load_baseline(BASELINES, "Dataset004_Hippocampus", 0, ".nii.gz")
    assert len(dice) == 52 and all(set(d) == {"1", "2"} for d in dice.values())
    assert all(0 <= v <= 1 for d in dice.values() for v in d.values())
    assert 0.85 < np.mean(report.case_mean(dice, sorted(dice))) < 0.95


@pytest.mark.e2e
def test_tiny_benchmark_runs_reports_resumes_and_reports_a_crash(tmp_path: Path) -> None:
    work = tmp_path / "bench"
    args = ["--synthetic", "--work", str(work), "--epochs", "1", "--iters", "2", "--val-iters", "1",
            "--batch-size", "2", "--low-data-cases", "4", "--trainers", "nnUNetTrainerScheduled",
            "nnUNetTrainerASNG", "nnUNetTrainerDoesNotExist"]
    assert main(args) == 1  # one trainer crashed: the run says so

    out = work / "report"
    text = (out / "report.md").read_text()
    assert "### Regime: full" in text and "### Regime: lowdata" in text and "SHORT budget" in text
    assert "Failed runs" in text and "nnUNetTrainerDoesNotExist" in text.split("Failed runs")[1]
    assert (out / "dice.png").stat().st_size > 1000
    with open(out / "dice_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["regime"], r["trainer"]) for r in rows} == {(regime, trainer) for regime in ("full", "lowdata")
                                                         for trainer in ("nnUNetTrainerScheduled", "nnUNetTrainerASNG")}
    assert all(0 <= float(r["dice"]) <= 1 or np.isnan(float(r["dice"])) for r in rows)

    # cost relative to the reference trainer of the same run, and what the search ended with, plot included
    asng_row = next(line for line in text.splitlines() if line.startswith("| nnUNetTrainerASNG |"))
    assert "s/iter vs nnUNetTrainerScheduled" in text and re.search(r"\| \d+\.\d\dx \|", asng_row)
    # the search trainer's weights saw fewer of the regime's training cases, and the table says how many
    lowdata = text.split("### Regime: lowdata")[1]
    assert "| nnUNetTrainerScheduled | 4 |" in lowdata and "| nnUNetTrainerASNG | 3 + 1 search |" in lowdata
    found = text.split("What each search ended with")[1]
    assert "- nnUNetTrainerASNG: `scale " in found and "full_nnUNetTrainerASNG_autoaug_theta.png" in found
    assert (out / "full_nnUNetTrainerASNG_autoaug_theta.png").stat().st_size > 1000

    full = work / "runs" / "full" / "nnUNetTrainerScheduled"
    status = json.loads((full / "status.json").read_text())
    assert status["state"] == "done" and "--c" not in status["train"]["command"]
    assert status["train"]["peak_rss_mb"] > 100
    trained = Path(status["output_folder"])
    assert trained.name == "fold_0" and trained.parent.name == "nnUNetTrainerScheduled__nnUNetPlans_bs2__3d_fullres"
    # the table shows how well each run fit its training cases against unseen ones (nnU-Net's last-epoch losses)
    logged = runner.training_log(trained)
    stock_row = next(line for line in text.split("### Regime: lowdata")[0].splitlines()
                     if line.startswith("| nnUNetTrainerScheduled |"))
    assert f"| {logged['train_losses'][-1] - logged['val_losses'][-1]:+.2f} |" in stock_row
    assert "- train - val loss, last epoch: nnU-Net's logged training loss" in text  # and says how to read it
    log = next(trained.glob("training_log_*.txt")).read_text()
    assert "schedule set by environment variables" in log  # the stock trainer ran the benchmark's budget
    low = Path(json.loads((work / "runs" / "lowdata" / "nnUNetTrainerScheduled" / "status.json").read_text())
               ["output_folder"])
    assert low.name == "fold_5" and "This split has 4 training and 3 validation cases" in \
        next(low.glob("training_log_*.txt")).read_text()

    # rerun: the finished trainer is skipped; an interrupted one continues with --c, and its cost adds both calls
    log_before = (full / "log.txt").read_text()
    low_status = work / "runs" / "lowdata" / "nnUNetTrainerScheduled" / "status.json"
    killed = json.loads(low_status.read_text())
    killed["state"], killed["train"] = "failed", {**killed["train"], "returncode": -15, "wall_s": 1000.0,
                                                  "cpu_share": 0.5}
    low_status.write_text(json.dumps(killed))
    assert main(args) == 1
    assert (full / "log.txt").read_text() == log_before
    resumed = json.loads(low_status.read_text())
    assert resumed["state"] == "done" and "--c" in resumed["train"]["command"] and resumed["train"]["calls"] == 2
    # the combined CPU share weights each call by its wall time; the second call's own share depends on the load
    later_wall = resumed["train"]["wall_s"] - 1000.0
    assert later_wall > 0
    lowest, highest = 500 / (1000 + later_wall), (500 + 1.05 * later_wall) / (1000 + later_wall)
    assert lowest - 1e-3 <= resumed["train"]["cpu_share"] <= highest + 1e-3

    # a second, independent run of one trainer: its own results tree, reported beside the first
    again = [*args[:args.index("--trainers")], "--regimes", "full", "--trainers", "nnUNetTrainerScheduled",
             "--repeats", "2"]
    assert main(again) == 0
    assert (full / "log.txt").read_text() == log_before  # run 1 is finished: skipped
    second = json.loads((work / "runs" / "full" / "nnUNetTrainerScheduled__run2" / "status.json").read_text())
    assert second["state"] == "done" and second["label"] == "nnUNetTrainerScheduled#2"
    assert Path(second["output_folder"]).parents[2].name == "nnUNet_results_run2"
    text = (out / "report.md").read_text()
    assert "| nnUNetTrainerScheduled#2 |" in text and "nnUNetTrainerScheduled#2 vs run 1:" in text

    # --retrain: the finished search's result trained on all of the regime's training cases, as its log recommends
    retrain = [*args[:args.index("--trainers")], "--regimes", "lowdata", "--trainers", "nnUNetTrainerScheduled",
               "nnUNetTrainerASNG", "--retrain"]
    assert main(retrain) == 0
    runs = work / "runs" / "lowdata"
    searched = Path(json.loads((runs / "nnUNetTrainerASNG" / "status.json").read_text())["output_folder"])
    retrained = json.loads((runs / "nnUNetTrainerASNG__retrain" / "status.json").read_text())
    assert retrained["state"] == "done" and retrained["label"] == "nnUNetTrainerASNG+retrain"
    assert retrained["trainer"] == "nnUNetTrainerPolicy"
    assert retrained["settings"]["nnUNet_autoaug_policy"] == str(searched / "autoaug_theta.json")
    folder = Path(retrained["output_folder"])
    assert folder.parents[2].name == "nnUNet_results_retrain_nnUNetTrainerASNG" and folder.name == "fold_5"
    assert Policy.load(folder / "autoaug_policy.json") == Policy.load(searched / "autoaug_theta.json")
    assert not (runs / "nnUNetTrainerScheduled__retrain").exists()  # no search split: nothing to retrain
    text = (out / "report.md").read_text()
    assert "| nnUNetTrainerASNG+retrain | 4 |" in text and "| nnUNetTrainerASNG | 3 + 1 search |" in text
    assert "- <search>+retrain: nnUNetTrainerPolicy trained on all" in text
    with open(out / "dice_per_case.csv") as f:
        assert "nnUNetTrainerASNG+retrain" in {r["trainer"] for r in csv.DictReader(f)}
