"""Vectorised random draws shared by every search space, all from an explicit ``torch.Generator``."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch


def make_generator(seed: int | None = None) -> torch.Generator:
    """A CPU generator; without a seed it is seeded from OS entropy.

    Data-loader workers are forked copies of one process, so a generator created *before* the fork would make every
    worker draw the same "random" policy. Call this inside each worker (or pass distinct seeds) instead.
    """
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") & (2 ** 63 - 1))
    return g


def uniform(lo: torch.Tensor | float, hi: torch.Tensor | float, n: int, generator: torch.Generator) -> torch.Tensor:
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    return lo + (hi - lo) * torch.rand(n, generator=generator)


def bernoulli(p: torch.Tensor | float, n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < torch.as_tensor(p, dtype=torch.float32)


def flat_dirichlet(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Probability vectors along the last axis, uniform on the simplex (normalised exponential draws), in float64."""
    w = -torch.log(torch.rand(shape, generator=generator).clamp_min(1e-12)).double()
    return w / w.sum(dim=-1, keepdim=True)


def around_one(lo: torch.Tensor | float, hi: torch.Tensor | float, n: int, generator: torch.Generator) -> torch.Tensor:
    """nnU-Net's 50/50 rule (bg v1 scaling, bgv2 ``BGContrast``) for ranges that straddle 1.

    Uniform on [lo, hi] would push most draws above 1 for a range like (0.7, 1.5); instead half the draws fall in
    [lo, 1] and half in [1, hi]. Ranges entirely on one side of 1 are sampled uniformly.
    """
    lo = torch.as_tensor(lo, dtype=torch.float32).expand(n)
    hi = torch.as_tensor(hi, dtype=torch.float32).expand(n)
    straddles = (lo < 1) & (hi > 1)
    below = bernoulli(0.5, n, generator)
    low_side = uniform(lo, torch.ones(n), n, generator)
    high_side = uniform(torch.ones(n), hi, n, generator)
    plain = uniform(lo, hi, n, generator)
    return torch.where(straddles, torch.where(below, low_side, high_side), plain)


def per_channel(rule: Callable[..., torch.Tensor], lo: torch.Tensor | float, hi: torch.Tensor | float, n: int,
                channels: int, generator: torch.Generator) -> torch.Tensor:
    """(n, channels) independent draws of ``rule`` (e.g. ``uniform``) with per-sample bounds: one value per image
    channel, as nnU-Net draws its intensity transforms with ``synchronize_channels=False``."""
    def repeat(bound: torch.Tensor | float) -> torch.Tensor:
        return torch.as_tensor(bound, dtype=torch.float32).expand(n).repeat_interleave(channels)
    return rule(repeat(lo), repeat(hi), n * channels, generator).view(n, channels)


def random_sign(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.where(bernoulli(0.5, n, generator), -1.0, 1.0)


def mirror(n: int, p: torch.Tensor | float, axes: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """(n, 3) flips: each allowed axis flips with probability p, independently (as nnU-Net's MirrorTransform)."""
    flips = torch.zeros(n, 3)
    for axis in axes:
        flips[:, axis] = bernoulli(p, n, generator).float()
    return flips
