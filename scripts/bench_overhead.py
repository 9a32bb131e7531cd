"""Seconds per training iteration of several trainers on the same preprocessed dataset, measured in one run.

    python scripts/bench_overhead.py --trainers nnUNetTrainer nnUNetTrainerASNG nnUNetTrainerASNGFast \
        --iters 10 --device cpu --json out.json [--dataset ID]

Without --dataset, the embedded synthetic dataset is generated and preprocessed into a temporary nnU-Net tree.
Each trainer runs ``train_step`` on loader batches after --warmup untimed iterations; the trainers take turns
(round robin), so background load hits all of them alike. Output: {trainer: {sec_per_iter, ratio_vs_nnUNetTrainer,
step_peak_gpu_mib}}; the last, on CUDA only, is the most a step allocated above what was resident before it (the
weights and optimizer states of all trainers): the memory the trainer's step itself needs.
Searchers keep their own k (search every k-th iteration; ASNGFast and MetaAugFirstOrder: 2) unless --theta-every
sets one for all: use an even --iters, so that search and plain iterations are counted alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainers", nargs="+", default=["nnUNetTrainer", "nnUNetTrainerASNG",
                                                          "nnUNetTrainerASNGFast"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dataset", type=int, help="preprocessed dataset id under $nnUNet_preprocessed")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--plans", default="nnUNetPlans", help="plans identifier, e.g. the benchmark's nnUNetPlans_bs2")
    parser.add_argument("--theta-every", type=int,
                        help="k (theta_update_every / update_every) of every searcher; default: each trainer's own")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    os.environ.setdefault("nnUNet_compile", "f")
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset is None:
            from nnunet_autoaug.pipeline import NnUNetTree
            from nnunet_autoaug.synthetic import DEFAULT_ID, make_synthetic_dataset

            tree = NnUNetTree(Path(tmp))
            make_synthetic_dataset(tree.raw, DEFAULT_ID)
            tree.plan_and_preprocess(DEFAULT_ID)
            os.environ.update(nnUNet_raw=str(tree.raw), nnUNet_preprocessed=str(tree.preprocessed),
                              nnUNet_results=str(tree.results))
            dataset_id = DEFAULT_ID
        else:
            dataset_id = args.dataset
            os.environ.setdefault("nnUNet_results", tmp)
        from nnunetv2.paths import nnUNet_preprocessed

        from nnunet_autoaug.pipeline import build_trainer

        # loading is not timed, so no worker processes (set after planning: nnU-Net's planner sizes threads by it)
        os.environ.setdefault("nnUNet_n_proc_DA", "0")

        folder = next(Path(os.fspath(nnUNet_preprocessed)).glob(f"Dataset{dataset_id:03d}_*"))
        device = torch.device(args.device)
        trainers = {name: build_trainer(name, folder, args.configuration, device,
                                         plans_name=args.plans) for name in args.trainers}
        for trainer in trainers.values():
            if hasattr(trainer, "theta_update_every") and args.theta_every is not None:
                trainer.theta_update_every = args.theta_every
        every = {name: t.theta_update_every for name, t in trainers.items() if hasattr(t, "theta_update_every")}
        times: dict[str, list[float]] = {name: [] for name in trainers}
        step_mib: dict[str, float] = {name: 0.0 for name in trainers}
        for it in range(args.warmup + args.iters):
            for name, trainer in trainers.items():
                batch = next(trainer.dataloader_train)  # loading is not timed: workers prefetch it in training
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    resident = torch.cuda.memory_allocated()  # every trainer's weights and optimizer state
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                trainer.train_step(batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    step_mib[name] = max(step_mib[name], (torch.cuda.max_memory_allocated() - resident) / 2 ** 20)
                if it >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        base = float(np.mean(times["nnUNetTrainer"])) if "nnUNetTrainer" in times else None
        result = {name: {"sec_per_iter": float(np.mean(t)), "sec_per_iter_std": float(np.std(t)),
                         "ratio_vs_nnUNetTrainer": float(np.mean(t)) / base if base else None,
                         "step_peak_gpu_mib": step_mib[name] if device.type == "cuda" else None}
                  for name, t in times.items()}
    meta = {"device": args.device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "torch": torch.__version__, "dataset": dataset_id,
            "configuration": args.configuration, "plans": args.plans, "iters": args.iters, "warmup": args.warmup,
            "theta_every": every}
    print(json.dumps({"meta": meta, **result}, indent=2))
    if args.json:
        args.json.write_text(json.dumps({**result, "meta": meta}, indent=2))
    return result


if __name__ == "__main__":
    main()
