"""The RL strategy search on Ray Tune, end to end on CPU: 2 concurrent tiny nnU-Net trials, one injected trial crash
(retried, continuing from its checkpoint_latest.pth), the driver killed with SIGKILL and resumed with --resume from a
torn copy of Tune's state (the search algorithm's files missing, as a kill during Tune's background copy leaves it)."""
from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nnunet_autoaug.pipeline import NnUNetTree, console_script
from nnunet_autoaug.rl.cli import EXPERIMENT
from nnunet_autoaug.rl.strategy import Strategy
from nnunet_autoaug.rl.tune_snapshot import SNAPSHOT_FILE
from nnunet_autoaug.synthetic import DEFAULT_ID

pytestmark = pytest.mark.e2e
SAMPLES = 3


def _env(tree: NnUNetTree, crash_marker: Path) -> dict[str, str]:
    return tree.env(nnUNet_n_proc_DA="0", OMP_NUM_THREADS="1", nnUNet_autoaug_rl_crash_once=str(crash_marker))


def _history(out: Path) -> dict:
    path = out / "searcher_history.json"
    return json.loads(path.read_text()) if path.is_file() else {"trials": []}


@pytest.fixture(scope="module")
def killed_and_resumed(nnunet_tree: NnUNetTree, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("rl_search")
    out, marker = work / "search", work / "crashed_once"
    command = [console_script("nnUNetv2_autoaug_search_rl"), "-d", str(DEFAULT_ID), "-c", "3d_fullres", "-o", str(out),
               "--num-samples", str(SAMPLES), "--concurrent", "2", "--num-cpus", "2", "--epochs", "2", "--iters", "2",
               "--val-iters", "1", "--searcher", "ppo", "--seed", "1"]
    log = (work / "first.log").open("w")
    driver = subprocess.Popen(command, env=_env(nnunet_tree, marker), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    deadline = time.time() + 600
    while not _history(out)["trials"] and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    before_kill = _history(out)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the processes of its session, nothing else
    driver.wait()
    assert before_kill["trials"], (work / "first.log").read_text()[-3000:]
    assert (out / SNAPSHOT_FILE).is_file()
    experiment = out / "ray" / EXPERIMENT
    torn = [*experiment.glob("search_gen_state-*.json"), *experiment.glob("searcher-state-*.pkl")]
    for p in torn:  # without the driver's snapshot, Tune would restore the trials only and start no new trial
        p.unlink()
    resumed = subprocess.run([console_script("nnUNetv2_autoaug_search_rl"), "-o", str(out), "--resume"], check=False,
                             env=_env(nnunet_tree, marker), text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-5000:]
    assert torn and "resuming from the driver's snapshot of Tune's state" in resumed.stdout
    return {"out": out, "marker": marker, "before_kill": before_kill, "log": resumed.stdout}


def test_search_runs_concurrent_trials_and_writes_outputs(killed_and_resumed: dict) -> None:
    out = killed_and_resumed["out"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == SAMPLES and all(r["status"] == "completed" for r in rows), killed_and_resumed["log"][-3000:]
    assert all(0 <= float(r["dice"]) <= 1 for r in rows)
    best = Strategy.load(out / "best_strategy.json")  # trainable with nnUNetTrainerStrategy
    best_row = max(rows, key=lambda r: float(r["dice"]))
    assert best.learning_rate == pytest.approx(float(best_row["lr"]))
    assert (out / "search_rl.png").stat().st_size > 5000
    # every trial trained nnU-Net under its own trial id, and reported the Dice of the held-out search split
    for r in rows:
        result = json.loads((out / "trials" / r["trial_id"] / "result.json").read_text())
        assert result["final"] and result["epochs"] == 2 and result["dice"] == pytest.approx(float(r["dice"]))
        fold = Path(result["output_folder"])
        assert fold.is_relative_to(out / "trials" / r["trial_id"]) and (fold / "checkpoint_final.pth").is_file()
        assert json.loads((fold / "autoaug_search_dice.json").read_text())["search_cases"]
    # two trials trained at the same time: their [strategy written, result written] intervals overlap
    spans = sorted(((out / "trials" / r["trial_id"] / "strategy.json").stat().st_mtime,
                    (out / "trials" / r["trial_id"] / "result.json").stat().st_mtime) for r in rows)
    assert any(a_end > b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))


def test_crashed_trial_is_retried_from_its_checkpoint(killed_and_resumed: dict) -> None:
    out = killed_and_resumed["out"]
    crashed = killed_and_resumed["marker"].read_text().strip()  # the trial that died (os._exit) after epoch 1
    result = json.loads((out / "trials" / crashed / "result.json").read_text())
    assert result["resumed_from_epoch"] == 1 and result["epochs"] == 2


def test_killed_driver_resumes_with_the_searcher_state(killed_and_resumed: dict) -> None:
    before, after = killed_and_resumed["before_kill"], _history(killed_and_resumed["out"])
    assert after["n_restored"] >= 1, killed_and_resumed["log"][-3000:]  # Tune called our restore() hook
    # the controller kept what it had learned before the kill: its history starts with the same completions and it
    # was updated once per completed trial in total (a fresh controller would count only post-restore trials)
    n = len(before["trials"])
    assert [t["trial_id"] for t in after["trials"][:n]] == [t["trial_id"] for t in before["trials"]]
    assert after["trials"][0]["mean_after"] == before["trials"][0]["mean_after"]
    assert len(after["trials"]) == SAMPLES and after["state"]["n_observed"] == SAMPLES
    assert after["state"]["n_updates"] == SAMPLES and after["in_flight"] == []
