"""The benchmark suite with the trainers that are more than one training: an RL search (its controller's proposals
and history in the report) and SCNAS (search, registration of the genotype, retraining), on the synthetic dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from nnunet_autoaug.benchmark.cli import main


@pytest.mark.e2e
def test_tiny_benchmark_runs_an_rl_trainer_and_searches_then_retrains_an_architecture(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiny networks, one RL segment per epoch, a fixed seed (the warm start's first proposal is a random draw)
    for key, value in {"nnUNet_autoaug_scnas_search_width": "4", "nnUNet_autoaug_scnas_width": "4",
                       "nnUNet_autoaug_rl_every": "1", "nnUNet_autoaug_seed": "3"}.items():
        monkeypatch.setenv(key, value)
    work = tmp_path / "bench"
    args = ["--synthetic", "--work", str(work), "--epochs", "2", "--iters", "1", "--val-iters", "1",
            "--batch-size", "2", "--low-data-cases", "4", "--regimes", "lowdata", "--trainers",
            "nnUNetTrainerSCNAS", "nnUNetTrainerRLWarmStart"]
    assert main(args) == 0

    job = work / "runs" / "lowdata" / "nnUNetTrainerSCNAS"
    status = json.loads((job / "status.json").read_text())
    assert status["state"] == "done" and status["configuration"] == "3d_fullres_scnas_fold5"
    assert "nnUNetTrainerSCNASSearch" in status["search"]["command"] and "--name" in status["register"]["command"]
    retrained = Path(status["output_folder"])
    assert retrained.parent.name == "nnUNetTrainerSCNAS__nnUNetPlans_bs2__3d_fullres_scnas_fold5"
    plans = json.loads((retrained.parent / "plans.json").read_text())
    searched = json.loads((Path(status["search_output_folder"]) / "scnas_genotype.json").read_text())
    assert plans["configurations"]["3d_fullres_scnas_fold5"]["architecture"]["arch_kwargs"]["genotype"] == searched
    assert "-c 3d_fullres_scnas_fold5" in " ".join(status["predict"]["command"])

    out = work / "report"
    rows = {r["trainer"]: r for r in json.loads((out / "summary.json").read_text())["regimes"]["lowdata"]}
    both = status["search"]["wall_s"] + status["train"]["wall_s"]
    assert rows["nnUNetTrainerSCNAS"]["train_wall_h"] == pytest.approx(both / 3600)  # the search is part of the cost
    assert rows["nnUNetTrainerRLWarmStart"]["dice_mean"] >= 0 and rows["nnUNetTrainerSCNAS"]["dice_mean"] >= 0
    found = (out / "report.md").read_text().split("What each search ended with")[1]
    assert "- nnUNetTrainerRLWarmStart: `lr " in found and "(lowdata_nnUNetTrainerRLWarmStart_autoaug_rl.png)" in found
    rl = json.loads((work / "runs" / "lowdata" / "nnUNetTrainerRLWarmStart" / "status.json").read_text())
    segments = json.loads((Path(rl["output_folder"]) / "autoaug_rl_history.json").read_text())["segments"]
    assert segments[0]["learning_rate"] > 3e-3  # warm start: near nnU-Net's 1e-2, not the paper controller's 1e-3
    assert "retrained as `3d_fullres_scnas_fold5`" in found
    assert json.loads((out / "lowdata_nnUNetTrainerSCNAS_scnas_genotype.json").read_text()) == searched
    assert (out / "lowdata_nnUNetTrainerSCNAS_scnas_cells.png").stat().st_size > 1000

    # a failed evaluation is retried without searching or training again: their measurements are kept
    status["state"] = "failed"
    (job / "status.json").write_text(json.dumps(status))
    assert main(args) == 0
    again = json.loads((job / "status.json").read_text())
    assert again["search"] == status["search"] and again["train"] == status["train"]
    assert (job / "log.txt").read_text().count("-tr nnUNetTrainerSCNASSearch") == 1
