"""Compare the training batches of nnU-Net's own augmentation pipeline with nnUNetTrainerPolicy's (our engine).

    python scripts/compare_pipelines.py --preprocessed WORK/nnunet/nnUNet_preprocessed \
        --dataset Dataset004_Hippocampus --plans nnUNetPlans_bs2 --fold 5 --batches 40 [--policy nnunet_default]

Both trainers are built as nnUNetv2_train builds them, on the CPU, with their results in a temporary folder. For
each, N training batches are drawn exactly as training draws them (nnU-Net's loader and transforms for
nnUNetTrainerScheduled; nnU-Net's loader, then the policy on our engine for nnUNetTrainerPolicy) and summarised:
share of voxels of each label in the full-resolution target, image mean and std, and how many cases the batches
came from. Matching figures mean the network sees the same distribution of inputs from both pipelines.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


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
    for worker_loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(worker_loader, "_finish"):  # nnU-Net's background workers
            worker_loader._finish()
    mean = np.mean(rows, axis=0)
    labels = {f"label {lab}": round(float(v), 4) for lab, v in zip(trainer.label_manager.foreground_labels, mean[2:])}
    return {"image mean": round(float(mean[0]), 3), "image std": round(float(mean[1]), 3), **labels,
            "cases seen": len(keys)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preprocessed", type=Path, required=True, help="nnUNet_preprocessed folder")
    parser.add_argument("--dataset", required=True, help="e.g. Dataset004_Hippocampus")
    parser.add_argument("--plans", default="nnUNetPlans")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--policy", default="nnunet_default", help="preset or policy JSON for nnUNetTrainerPolicy")
    args = parser.parse_args(argv)
    folder = args.preprocessed / args.dataset
    if not (folder / f"{args.plans}.json").is_file():
        raise SystemExit(f"{folder / (args.plans + '.json')} does not exist: pass the nnUNet_preprocessed folder of a "
                         f"planned and preprocessed dataset (e.g. the benchmark's WORK/nnunet/nnUNet_preprocessed).")
    with tempfile.TemporaryDirectory(prefix="compare_pipelines_") as results:  # the trainers' folders, then gone
        os.environ.update(nnUNet_preprocessed=str(args.preprocessed), nnUNet_autoaug_policy=args.policy,
                          nnUNet_results=results)
        os.environ.setdefault("nnUNet_raw", results)
        for trainer_name in ("nnUNetTrainerScheduled", "nnUNetTrainerPolicy"):
            stats = batch_stats(trainer_name, folder, args.plans, args.fold, args.batches)
            print(f"{trainer_name}: " + ", ".join(f"{k} {v}" for k, v in stats.items()), flush=True)


if __name__ == "__main__":
    main()
