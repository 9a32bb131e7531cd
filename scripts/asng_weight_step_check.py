"""Does ASNG's weight step (same crops x N_w policies, 20% of cases held out) or its search slow training?

    python scripts/asng_weight_step_check.py --iters 60 --seeds 1

Runs, interleaved on the synthetic dataset: RandAug and ASNG with theta frozen at its uniform start (so all variants
share one marginal augmentation distribution) with N_w = 2, N_w = 1, and N_w = 1 without a search split, and ASNG
searching as it does in training. Prints the mean training loss of the first and last 10 iterations per variant and
seed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

FROZEN = 10**9  # theta_update_every: theta never moves after construction

VARIANTS = {
    "RandAug": ("nnUNetTrainerRandAug", {}),
    "ASNG frozen, N_w=2": ("nnUNetTrainerASNG", {"theta_update_every": FROZEN}),
    "ASNG frozen, N_w=1": ("nnUNetTrainerASNG", {"theta_update_every": FROZEN, "num_weight_policies": 1}),
    "ASNG frozen, N_w=1, no search split": ("nnUNetTrainerASNG", {"theta_update_every": FROZEN,
                                                                  "num_weight_policies": 1, "search_fraction": 0.0}),
    "ASNG searching (look-ahead every iteration)": ("nnUNetTrainerASNG", {}),
}


def build(name: str, attributes: dict, folder: Path, fold: int, seed: int):  # noqa: ANN201
    import nnunet_autoaug.trainers as ours
    from batchgenerators.utilities.file_and_folder_operations import load_json

    plans = load_json(str(folder / "nnUNetPlans.json"))
    plans["continue_training"] = False
    torch.manual_seed(seed)
    os.environ["nnUNet_autoaug_seed"] = str(seed)
    trainer = getattr(ours, name)(plans, "3d_fullres", fold, load_json(str(folder / "dataset.json")),
                                  torch.device("cpu"))
    for key, value in attributes.items():  # before initialize: search_fraction shapes the data split
        setattr(trainer, key, value)
    trainer.initialize()
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    trainer.lr_scheduler.step(0)
    if "theta_update_every" in attributes:
        trainer.iteration = 1  # skip the update at iteration 0 too
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--fold", type=int, default=3)
    args = parser.parse_args()
    from nnunet_autoaug.pipeline import NnUNetTree
    from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tree = NnUNetTree(Path(tmp))
        make_synthetic_dataset(tree.raw, DEFAULT_ID)
        tree.plan_and_preprocess(DEFAULT_ID)
        os.environ.update({k: v for k, v in tree.env().items() if k.startswith("nnUNet_")})
        os.environ["nnUNet_n_proc_DA"] = "0"  # after planning (the planner sizes its threads by it)
        folder = tree.preprocessed / tree.dataset_name(DEFAULT_ID)
        for seed in args.seeds:
            runs = {label: build(name, attrs, folder, args.fold, seed) for label, (name, attrs) in VARIANTS.items()}
            losses: dict[str, list[float]] = {label: [] for label in runs}
            for _ in range(args.iters):
                for label, trainer in runs.items():
                    losses[label].append(float(trainer.train_step(next(trainer.dataloader_train))["loss"]))
            for label, values in losses.items():
                print(f"seed {seed} | {label:40s} | first 10: {np.mean(values[:10]):+.3f} | "
                      f"last 10: {np.mean(values[-10:]):+.3f}", flush=True)


if __name__ == "__main__":
    main()
