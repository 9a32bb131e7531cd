"""The main job: a short, real end-to-end run with a policy trainer, using only stock nnU-Net commands.

    python scripts/demo.py                              # embedded synthetic dataset, a few minutes on CPU
    python scripts/demo.py --data /path/Task04_Hippocampus   # a real MSD task folder

Steps: dataset (generate, or convert the MSD folder) -> plan and preprocess -> nnUNetv2_train with the trainer
(fold 0, short schedule via nnUNet_autoaug_* variables) -> nnUNetv2_predict -> evaluation -> Dice printed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from nnunet_autoaug.pipeline import NnUNetTree, import_msd_task
from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset


def prepare_dataset(tree: NnUNetTree, data: Path | None) -> int:
    if data is None:
        make_synthetic_dataset(tree.raw, DEFAULT_ID)
        return DEFAULT_ID
    try:
        return import_msd_task(tree, data)
    except ValueError as error:
        sys.exit(f"--data: {error}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="MSD task folder (default: the embedded synthetic dataset)")
    parser.add_argument("--work", type=Path, default=Path("demo_work"), help="nnU-Net tree to create/reuse")
    parser.add_argument("--trainer", default="nnUNetTrainerASNG")
    parser.add_argument("--epochs", type=int, help="default: 8 (synthetic) or 2 (real data)")
    parser.add_argument("--iters", type=int, help="iterations per epoch; default: 20 (synthetic) or 5 (real data)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    real = args.data is not None
    epochs, iters = args.epochs or (2 if real else 8), args.iters or (5 if real else 20)

    tree = NnUNetTree(args.work.resolve())
    start = time.time()
    step = lambda msg: print(f"[{time.time() - start:6.0f} s] {msg}", flush=True)
    step(f"dataset into {tree.raw}")
    dataset_id = prepare_dataset(tree, args.data)
    raw = next(tree.raw.glob(f"Dataset{dataset_id:03d}_*"))
    if not (tree.preprocessed / raw.name / "nnUNetPlans_3d_fullres").is_dir():
        step("nnUNetv2_plan_and_preprocess (3d_fullres)")
        tree.plan_and_preprocess(dataset_id)
    logs = tree.root / "logs"
    step(f"nnUNetv2_train {dataset_id} 3d_fullres 0 -tr {args.trainer} ({epochs} epochs x {iters} iterations, "
         f"{args.device}); log: {logs / 'train.txt'}")
    tree.run("nnUNetv2_train", dataset_id, "3d_fullres", 0, "-tr", args.trainer, "-device", args.device,
             log=logs / "train.txt", nnUNet_autoaug_epochs=str(epochs), nnUNet_autoaug_iters=str(iters),
             nnUNet_autoaug_val_iters=str(max(1, iters // 4)))  # nnU-Net's 50 would dominate a short run
    fold = tree.output_folder(dataset_id, args.trainer, "3d_fullres", 0)
    validation = json.loads((fold / "validation" / "summary.json").read_text())

    pred = tree.root / "predictions" / args.trainer
    step(f"nnUNetv2_predict {raw / 'imagesTs'} -> {pred}")
    tree.run("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", pred, "-d", dataset_id, "-c", "3d_fullres", "-tr",
             args.trainer, "-f", 0, "-device", args.device, "-npp", 1, "-nps", 1, log=logs / "predict.txt")
    test_dice = None
    if (raw / "labelsTs").is_dir() and any((raw / "labelsTs").iterdir()):
        step("nnUNetv2_evaluate_folder on the test cases")
        preprocessed = tree.preprocessed / raw.name
        tree.run("nnUNetv2_evaluate_folder", raw / "labelsTs", pred, "-djfile", preprocessed / "dataset.json",
                 "-pfile", preprocessed / "nnUNetPlans.json", "-np", 1, log=logs / "evaluate.txt")
        test_dice = json.loads((pred / "summary.json").read_text())["foreground_mean"]["Dice"]

    step("done")
    print(f"\nResults folder: {fold}")
    print("  progress.png, augmentation_examples.png, validation/summary.json")
    per_class = {k: round(v["Dice"], 4) for k, v in validation["mean"].items()}
    print(f"Dice on the fold's validation cases: mean {validation['foreground_mean']['Dice']:.4f}, per class "
          f"{per_class}")
    if test_dice is not None:
        print(f"Dice on the test cases (nnUNetv2_evaluate_folder): {test_dice:.4f}")
    weak = [label for label, dice in per_class.items() if dice < 0.5]
    if weak:
        # short runs stall now and then (docs/BENCHMARKS.md sections 3 and 4.3): say so rather than leave a bare number
        print(f"Label(s) {', '.join(weak)} below Dice 0.5: {epochs} x {iters} iterations is a short run, which "
              f"proves the pipeline but can leave a class unlearned. Rerun, or train longer with --epochs.")


if __name__ == "__main__":
    main()
