"""Cost of the cascade's previous-stage inputs per training batch (docs/BENCHMARKS.md, section 10).

Our trainers build them in the training process (nnunet_autoaug/augment/cascade.py: one-hot channels, nnU-Net's
morphological corruption on the training device, its component removal on the CPU); nnU-Net builds them in its
data-loader workers. Both are timed here on the same synthetic previous-stage segmentations, side by side:

    python scripts/bench_cascade.py --patch 128 128 128 --batch 2 --labels 3 --device cuda
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform

from nnunet_autoaug.augment.cascade import PreviousStageCorruption, cascade_inputs, seeded_global_rngs


def previous_stage(batch: int, patch: list[int], labels: int) -> torch.Tensor:
    """(B, 2, *patch) labels: an empty target and a previous stage of nested boxes, one per label."""
    seg = torch.zeros(batch, 2, *patch, dtype=torch.int16)
    for label in range(1, labels + 1):
        box = tuple(slice(s // 2 - s // (2 + 2 * label), s // 2 + s // (3 + label)) for s in patch)
        seg[(slice(None), 1, *box)] = label
    return seg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs="+", default=[128, 128, 128])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--labels", type=int, default=3, help="foreground labels of the previous stage")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (nnU-Net's workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    labels = list(range(1, args.labels + 1))
    corruption = PreviousStageCorruption(args.patch, labels)
    nnunet_steps = [MoveSegAsOneHotToDataTransform(1, labels, True), *corruption.transforms]
    seg = previous_stage(args.batch, args.patch, args.labels)
    data = torch.randn(args.batch, 1, *args.patch)
    ours, nnunet = [], []
    for b in range(args.batches):  # the two take turns, so that load on the machine hits both alike
        seeds = torch.arange(b * args.batch, (b + 1) * args.batch)
        on_device = data.to(args.device), seg.to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        cascade_inputs(*on_device, labels, corruption, seeds)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i, seed in enumerate(seeds.tolist()):  # what nnU-Net's workers do per sample, on the CPU
            sample = {"image": data[i].clone(), "segmentation": seg[i].clone()}
            with seeded_global_rngs(seed):
                for transform in nnunet_steps:
                    sample = transform(**sample)
        nnunet.append(time.perf_counter() - start)
    result = {"patch": args.patch, "batch": args.batch, "labels": args.labels, "device": args.device,
              "threads": args.threads, "batches": args.batches,
              "ours_s_per_batch_mean": sum(ours) / len(ours), "ours_s_per_batch_max": max(ours),
              "nnunet_worker_cpu_s_per_batch_mean": sum(nnunet) / len(nnunet)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
