#!/usr/bin/env python
"""Time our batched augmentation engine against nnU-Net's default batchgeneratorsv2 (bgv2) pipeline.

Both sides get the same input crop, the same ops and (for the op sets ``spatial`` and ``full``) probability 1 for
every op, so they do the same work per sample. bgv2 runs per sample, as in nnU-Net's data-loader workers, so its
batch time is the sum of its per-sample call times; ours is one ``augment_batch`` call for the whole batch.
On CUDA only our engine runs: bgv2's SpatialTransform builds its sampling grid on the CPU.

    python scripts/bench_augment.py --json /tmp/bench_augment.json
    python scripts/bench_augment.py --device cuda --patch 128 --batch 4
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nnunet_autoaug.augment import AugmentParams, augment_batch
from nnunet_autoaug.augment.spatial import elastic_displacement, seeded_generator
from nnunet_autoaug.policy import PRESETS, SamplingContext, make_generator
from nnunet_autoaug.policy import draw

OP_SETS = ("spatial", "full", "nnunet_default")
ROTATION = math.radians(30.0)  # nnU-Net's 3D rotation range, +-30 deg per axis
SCALING = (0.7, 1.4)  # nnU-Net's scaling range (isotropic)
ELASTIC_ALPHA, ELASTIC_SIGMA = 450.0, 10.0  # ours, voxels; bgv2 gets the same sigma and a matched magnitude
GAMMA_RANGE, NOISE_STD = (0.7, 1.5), (0.0, 0.1)
MIRROR_AXES = (0, 1, 2)
# nnunet_default's cost per sample is random (bgv2 resamples only the ~36% of samples it rotates or scales), so its
# mean needs more samples than the always-on op sets; it is also the cheapest, so the extra repeats cost little.
NNUNET_DEFAULT_REPEAT_FACTOR = 4
QUICK_PATCHES = (24, 32)


@dataclass
class Timing:
    """Seconds per batch for each timed repeat (warm-up excluded)."""

    batch_s: list[float] = field(default_factory=list)

    def summary(self, batch_size: int) -> dict[str, object]:
        ms = [1e3 * t for t in self.batch_s]
        mean = statistics.fmean(ms)
        return {"ms_per_batch": mean, "ms_per_sample": mean / batch_size,
                "ms_per_batch_std": statistics.stdev(ms) if len(ms) > 1 else 0.0, "ms_per_batch_all": ms}


# ----------------------------------------------------------------------------------------------------------- inputs

def input_size(patch: int) -> int:
    """nnU-Net's initial patch size for +-30 deg rotations (its own sizing rule); both sides get this crop."""
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

    r = (-ROTATION, ROTATION)
    return int(max(get_patch_size((patch,) * 3, r, r, r, (0.85, 1.25))))


def make_sample(size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One 1-channel image (random floats) and an int16 label map with labels {0, 1, 2} (two nested balls):
    bgv2's label resampling loops over the labels present, so the map must hold all three."""
    image = torch.randn((1, size, size, size), generator=generator)
    axis = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    r = torch.sqrt(axis.view(-1, 1, 1) ** 2 + axis.view(1, -1, 1) ** 2 + axis.view(1, 1, -1) ** 2)
    seg = (r < 0.4 * size).to(torch.int16) + (r < 0.2 * size).to(torch.int16)
    return image, seg[None]


def matched_elastic_magnitude(patch: int) -> float:
    """bgv2 scales each displacement component to a given maximum (pixels); give it the maximum our field has, so
    both deform about equally strongly (the cost barely depends on it, the realism does)."""
    field_ = elastic_displacement((patch,) * 3, ELASTIC_ALPHA, ELASTIC_SIGMA, seeded_generator(0, torch.device("cpu")),
                                  torch.device("cpu"))
    return float(field_.abs().flatten(1).amax(1).mean())


# ------------------------------------------------------------------------------------------------------ bgv2 side

def bgv2_spatial(patch: int, magnitude: float):
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    return SpatialTransform(
        (patch,) * 3, patch_center_dist_from_border=0, random_crop=False,
        p_elastic_deform=1, elastic_deform_scale=lambda patch_size, dim, **_: ELASTIC_SIGMA / patch_size[dim],
        elastic_deform_magnitude=lambda **_: magnitude,
        p_rotation=1, rotation=(-ROTATION, ROTATION), p_scaling=1, scaling=SCALING,
        p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
        # as nnU-Net: labels from outside the crop become -1, which is also what our engine does
        border_mode_seg="constant", padding_value_seg=-1)


def build_bgv2(op_set: str, patch: int, magnitude: float):
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if op_set == "spatial":
        return bgv2_spatial(patch, magnitude)
    if op_set == "full":
        return ComposeTransforms([
            bgv2_spatial(patch, magnitude),
            GammaTransform(BGContrast(GAMMA_RANGE), p_invert_image=0, synchronize_channels=False, p_per_channel=1,
                           p_retain_stats=1),
            GaussianNoiseTransform(NOISE_STD, p_per_channel=1, synchronize_channels=True),
            MirrorTransform(allowed_axes=MIRROR_AXES)])
    return nnUNetTrainer.get_training_transforms((patch,) * 3, (-ROTATION, ROTATION), deep_supervision_scales=None,
                                                 mirror_axes=MIRROR_AXES, do_dummy_2d_data_aug=False)


def time_bgv2(transform, samples: Sequence[tuple[torch.Tensor, torch.Tensor]], repeats: int) -> Timing:
    """Per batch = sum of per-sample calls, as nnU-Net's workers run it. Inputs are cloned outside the timed region
    because several bgv2 transforms work in place (and an unrotated crop is a view of the input)."""
    timing = Timing()
    for rep in range(repeats + 1):  # repeat 0 is the warm-up
        total = 0.0
        for image, seg in samples:
            image, seg = image.clone(), seg.clone()
            start = time.perf_counter()
            transform(image=image, segmentation=seg)
            total += time.perf_counter() - start
        if rep:
            timing.batch_s.append(total)
    return timing


# ------------------------------------------------------------------------------------------------------ our side

def always_params(op_set: str, n: int, generator: torch.Generator) -> AugmentParams:
    """The bgv2 op set with every op on for every sample, drawn from the same ranges."""
    scale = draw.uniform(*SCALING, n, generator)[:, None].expand(n, 3).clone()
    values = {"rotation": (torch.rand((n, 3), generator=generator) * 2 - 1) * ROTATION, "scale": scale,
              "elastic_alpha": torch.full((n,), ELASTIC_ALPHA), "elastic_sigma": torch.full((n,), ELASTIC_SIGMA)}
    if op_set == "full":
        values.update(gamma=draw.around_one(*GAMMA_RANGE, n, generator),
                      noise_std=draw.uniform(*NOISE_STD, n, generator),
                      mirror=draw.mirror(n, 0.5, MIRROR_AXES, generator))  # bgv2 flips each axis with p 0.5
    return AugmentParams.identity(n, generator).with_values(**values)


def params_sampler(op_set: str) -> Callable[[int, torch.Generator], AugmentParams]:
    if op_set == "nnunet_default":
        policy = PRESETS["nnunet_default"]
        return lambda n, g: policy.search_space.sample([policy] * n, g, SamplingContext())
    return lambda n, g: always_params(op_set, n, g)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ours(op_set: str, data: torch.Tensor, seg: torch.Tensor, patch: int, repeats: int,
              generator: torch.Generator) -> tuple[Timing, Timing]:
    """Per batch = one augment_batch call. New parameters every repeat (costs vary with them, e.g. which samples
    rotate in nnunet_default); drawing them is timed apart, since it is a few tiny CPU tensors."""
    engine, sampling = Timing(), Timing()
    sample = params_sampler(op_set)
    for rep in range(repeats + 1):
        start = time.perf_counter()
        params = sample(data.shape[0], generator)
        drawn = time.perf_counter()
        sync(data.device)
        begin = time.perf_counter()
        augment_batch(data, seg, params, (patch,) * 3)
        sync(data.device)
        if rep:
            sampling.batch_s.append(drawn - start)
            engine.batch_s.append(time.perf_counter() - begin)
    return engine, sampling


# ----------------------------------------------------------------------------------------------------------- driver

def repeats_for(op_set: str, repeats: int, quick: bool) -> int:
    if quick:
        return 1
    return repeats * NNUNET_DEFAULT_REPEAT_FACTOR if op_set == "nnunet_default" else repeats


def bench_one(op_set: str, patch: int, threads: int, args: argparse.Namespace) -> dict[str, object]:
    """Both sides for one (op set, patch, threads), back to back, on the same inputs."""
    torch.set_num_threads(threads)
    size, repeats, device = input_size(patch), repeats_for(op_set, args.repeats, args.quick), torch.device(args.device)
    seed = 1234 + patch
    samples = [make_sample(size, torch.Generator().manual_seed(seed + i)) for i in range(args.batch)]
    row: dict[str, object] = {"op_set": op_set, "patch": patch, "input": size, "threads": threads,
                              "device": device.type, "batch": args.batch, "repeats": repeats}
    data = torch.stack([img for img, _ in samples]).to(device)
    seg = torch.stack([s for _, s in samples]).to(device)
    engine, sampling = time_ours(op_set, data, seg, patch, repeats, make_generator(seed))
    row["ours"] = engine.summary(args.batch)
    row["ours_param_sampling_ms_per_batch"] = sampling.summary(args.batch)["ms_per_batch"]
    row["bgv2"], row["ratio"] = None, None
    if device.type == "cpu":
        np.random.seed(seed)  # bgv2 draws from numpy's and torch's global generators
        torch.manual_seed(seed)
        transform = build_bgv2(op_set, patch, matched_elastic_magnitude(patch))
        row["bgv2"] = time_bgv2(transform, samples, repeats).summary(args.batch)
        row["ratio"] = row["bgv2"]["ms_per_batch"] / row["ours"]["ms_per_batch"]
    return row


def cpu_name() -> str:
    """platform.processor() is empty on many Linux systems; fall back to /proc/cpuinfo."""
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64"):
        return name
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return models[0] if models else name or platform.machine()
    except OSError:
        return name or platform.machine()


def machine_info(device: torch.device) -> dict[str, object]:
    info = {"processor": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "device": device.type}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict[str, object]], machine: dict[str, object], notes: list[str]) -> str:
    lines = [f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']}, "
             f"device {machine['device']}" + (f" ({machine['gpu']})" if "gpu" in machine else ""),
             "",
             "| op set | patch (input) | threads | batch | repeats | bgv2 ms/sample | bgv2 ms/batch "
             "| ours ms/sample | ours ms/batch | speed-up bgv2/ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bg, ours = r["bgv2"] or {}, r["ours"]
        lines.append(f"| {r['op_set']} | {r['patch']}^3 ({r['input']}^3) | {r['threads']} | {r['batch']} "
                     f"| {r['repeats']} | {fmt(bg.get('ms_per_sample'))} | {fmt(bg.get('ms_per_batch'))} "
                     f"| {fmt(ours['ms_per_sample'])} | {fmt(ours['ms_per_batch'])} "
                     f"| {fmt(r['ratio'], 2) + 'x' if r['ratio'] is not None else 'n/a'} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def make_notes(args: argparse.Namespace, machine: dict[str, object]) -> list[str]:
    notes = ["Times are means over the timed repeats (1 warm-up excluded). bgv2 per batch = sum of per-sample "
             "calls (how nnU-Net's workers run it); ours per batch = one augment_batch call, per sample = batch / B.",
             "spatial/full: every op applied to every sample (p = 1); nnunet_default: nnU-Net's "
             "get_training_transforms vs our nnunet_default preset, i.e. the average cost with nnU-Net's "
             "probabilities (noisier: which samples get rotated/scaled varies per repeat).",
             "Ours excludes drawing the parameters (see ours_param_sampling_ms_per_batch in the JSON); bgv2's "
             "draws, including its elastic noise field, are inside its calls."]
    if not args.quick:
        notes.append(f"nnunet_default uses {NNUNET_DEFAULT_REPEAT_FACTOR}x the repeats: its per-sample cost is "
                     f"random, so its mean needs more samples.")
    load = machine["load_before"], machine["load_after"]
    if max(load) > 0.5:
        notes.append(f"The 1-min load average was {load[0]:.2f} before and {load[1]:.2f} after the run: other "
                     f"processes shared the CPUs, which inflates times, most of all at threads = cpu count.")
    if args.device == "cuda":
        notes.append("CUDA: our engine only (bgv2's SpatialTransform builds its grid on the CPU); inputs are on the "
                     "GPU before timing.")
    return notes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patch", type=int, nargs="+", default=[48, 128], help="cubic output patch sizes")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (plus 1 warm-up)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads values")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--op-sets", nargs="+", choices=OP_SETS, default=list(OP_SETS))
    p.add_argument("--json", help="also write the numbers to this JSON file")
    p.add_argument("--quick", action="store_true", help=f"patches {QUICK_PATCHES}, 1 repeat (for tests)")
    args = p.parse_args(argv)
    if args.quick:
        args.patch = list(QUICK_PATCHES)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.batch < 1 or args.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    device = torch.device(args.device)
    threads_before, load_before = torch.get_num_threads(), os.getloadavg()[0]
    start = time.perf_counter()
    rows = []
    try:
        for patch in args.patch:
            for threads in args.threads:
                for op_set in args.op_sets:
                    rows.append(bench_one(op_set, patch, threads, args))
                    print(f"  done {op_set} {patch}^3 T={threads}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads_before)  # main() may run inside another process (the test)
    machine = {**machine_info(device), "load_before": load_before, "load_after": os.getloadavg()[0]}
    notes = make_notes(args, machine)
    result = {"machine": machine, "config": {k: v for k, v in vars(args).items() if k != "json"},
              "results": rows, "notes": notes, "wall_s": time.perf_counter() - start}
    print(format_table(rows, machine, notes))
    print(f"\nWall time: {result['wall_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
