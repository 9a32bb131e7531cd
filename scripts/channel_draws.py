#!/usr/bin/env python
"""How nnU-Net and the ``nnunet_default`` policy draw intensity augmentation for images with several channels.

For each intensity op that nnU-Net draws per channel, both sides draw parameters for many samples of a C-channel
image: nnU-Net with the transforms of its own training pipeline (``get_parameters`` after the ``RandomTransform``
gate, exactly as its workers call them), we with ``RL_SPACE.sample`` for ``SamplingContext(channels=C)`` and, for
comparison, for one channel, repeated for all (what this package did before per-channel draws). Only the draws
are compared, not images, so the figures are exact frequencies up to sampling noise.

    python scripts/channel_draws.py --samples 20000 --channels 2
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_autoaug.augment.params import FIELD_SPECS
from nnunet_autoaug.policy import PRESETS, SamplingContext, make_generator
from nnunet_autoaug.policy.rl_space import PER_CHANNEL_OPS, RL_SPACE, SCALAR_OPS

FIELDS = tuple(SCALAR_OPS[op][0] for op in PER_CHANNEL_OPS)  # AugmentParams fields of the ops drawn per channel


def _field_of(transform: object) -> str | None:
    if isinstance(transform, GammaTransform):
        return "inv_gamma" if transform.p_invert_image == 1 else "gamma"
    kinds = {GaussianBlurTransform: "blur_sigma", MultiplicativeBrightnessTransform: "brightness",
             ContrastTransform: "contrast", SimulateLowResolutionTransform: "lowres"}
    return next((field for kind, field in kinds.items() if isinstance(transform, kind)), None)


def _values(field: str, params: dict, channels: int) -> np.ndarray:
    """One sample's per-channel values (NaN: channel left alone) from a bgv2 transform's get_parameters."""
    out = np.full(channels, np.nan)
    applied = params["apply_to_channel"]
    if field == "blur_sigma":  # a bool mask and per applied channel one sigma per axis: take axis 0
        idx = torch.as_tensor(applied).nonzero().flatten().tolist()
        out[idx] = [s[0] for s in params["sigmas"]]
        return out
    idx = torch.as_tensor(applied).flatten().tolist()
    if idx:
        key = {"brightness": "multipliers", "contrast": "multipliers", "lowres": "scales"}.get(field, "gamma")
        drawn = torch.as_tensor(params[key])
        out[idx] = (drawn[:, 0] if field == "lowres" else drawn).flatten().tolist()  # lowres: one scale per axis
    return out


def nnunet_draws(samples: int, channels: int, seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    np.random.seed(seed)
    pipeline = nnUNetTrainer.get_training_transforms((32, 32, 32), (0.0, 0.0), None, (0, 1, 2), False)
    gates = [(t, _field_of(t.transform)) for t in pipeline.transforms if isinstance(t, RandomTransform)]
    image = torch.randn(channels, 32, 32, 32)
    draws = {field: np.full((samples, channels), np.nan) for _, field in gates if field}
    for i in range(samples):
        for gate, field in gates:
            if field and gate.get_parameters(image=image)["apply_transform"]:
                draws[field][i] = _values(field, gate.transform.get_parameters(image=image), channels)
    return draws


def our_draws(samples: int, channels: int, seed: int, per_channel: bool = True) -> dict[str, np.ndarray]:
    """``per_channel=False``: drawn for one channel and repeated, one value per sample (what we did before)."""
    params = RL_SPACE.sample([PRESETS["nnunet_default"]] * samples, make_generator(seed),
                             SamplingContext(channels=channels if per_channel else 1))
    out = {}
    for field in FIELDS:
        values = getattr(params, field).double().numpy()
        values = np.repeat(values[:, None], channels, 1) if values.ndim == 1 else values
        out[field] = np.where(values == FIELD_SPECS[field][0], np.nan, values)
    return out


def statistics(values: np.ndarray) -> dict[str, float]:
    """Shares of samples and of channels an op changed; where channels 0 and 1 both changed, how often their values
    differ and how they correlate."""
    changed = ~np.isnan(values)
    both = changed[:, 0] & changed[:, 1]
    a, b = values[both, 0], values[both, 1]
    correlation = np.corrcoef(a, b)[0, 1] if both.sum() > 2 and np.std(a) * np.std(b) > 0 else np.nan
    return {"samples": changed.any(1).mean(), "channels": changed.mean(),
            "all channels, given the sample": changed.all(1).sum() / max(changed.any(1).sum(), 1),
            "values differ, given both": (a != b).mean() if both.any() else np.nan,
            "correlation, given both": 1.0 if both.any() and (a == b).all() else correlation}


def compare(samples: int, channels: int, seed: int) -> dict[str, dict[str, dict[str, float]]]:
    """side -> op field -> statistics."""
    sides = {"nnU-Net 2.8 pipeline": nnunet_draws(samples, channels, seed),
             "ours, per channel": our_draws(samples, channels, seed),
             "ours before (shared)": our_draws(samples, channels, seed, per_channel=False)}
    return {side: {field: statistics(draws[field]) for field in FIELDS} for side, draws in sides.items()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.channels < 2:
        parser.error("--channels must be at least 2: with one channel there is nothing to compare")
    result = compare(args.samples, args.channels, args.seed)
    columns = list(next(iter(next(iter(result.values())).values())))
    print(f"{args.samples} samples of a {args.channels}-channel image, seed {args.seed}\n")
    print("| op | draws | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for field in FIELDS:
        for side, stats in result.items():
            print(f"| {field} | {side} | " + " | ".join(f"{stats[field][c]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
