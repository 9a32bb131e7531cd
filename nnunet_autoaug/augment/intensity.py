"""Batched intensity ops. Each takes x (n, C, *spatial) and CPU values: (n,), one per sample and shared across
channels, or (n, C), one per channel (nnU-Net draws brightness, contrast, gamma, blur and low resolution per channel).

The engine calls them only for the samples whose value differs from the op's identity, so none of them needs a
"skip" branch. Semantics follow nnU-Net's batchgeneratorsv2 transforms where those exist (epsilons included).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nnunet_autoaug.augment.spatial import gaussian_filter, seeded_generator

# bgv2 GammaTransform's floor for the intensity range and the std it divides by
GAMMA_EPS = 1e-7


def _per_sample(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) or (n, C) CPU values -> (n, 1 or C, 1, ..., 1) on x's device, broadcastable against x."""
    _check_channels(value, x)
    return value.to(x.device, x.dtype).view(value.shape[0], -1 if value.ndim == 2 else 1, *[1] * (x.ndim - 2))


def _check_channels(value: torch.Tensor, x: torch.Tensor) -> None:
    if value.ndim == 2 and value.shape[1] != x.shape[1]:
        raise ValueError(f"{value.shape[1]} per-channel values for an image of {x.shape[1]} channels")


def _each_channel(x: torch.Tensor, values: torch.Tensor, identity: float,
                  op: Callable[[torch.Tensor, float], torch.Tensor]) -> torch.Tensor:
    """Loop ``op(sample, value)`` over samples, or with (n, C) values over the channels of each sample (a channel
    left at ``identity`` is copied). ``op`` gets a (C or 1, *spatial) tensor."""
    _check_channels(values, x)
    if values.ndim == 1:
        return torch.stack([op(xi, v) for xi, v in zip(x, values.tolist())])
    return torch.stack([torch.cat([xi[c:c + 1] if v == identity else op(xi[c:c + 1], v) for c, v in enumerate(row)])
                        for xi, row in zip(x, values.tolist())])


def _per_channel(stat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n, C) statistic -> (n, C, 1, ..., 1)."""
    return stat.view(*stat.shape, *[1] * (x.ndim - 2))


def _blur_axes(x: torch.Tensor, n_spatial: int, dummy_2d: bool) -> range:
    """The last n_spatial axes of x, without the coarse axis 0 in dummy 2D (smoothing stays within slices)."""
    return range(x.ndim - n_spatial + int(dummy_2d), x.ndim)


def gaussian_noise(x: torch.Tensor, std: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """x + std * N(0, 1), independent per voxel and channel, drawn from each sample's own generator."""
    noise = torch.stack([torch.randn(x.shape[1:], generator=seeded_generator(int(s), x.device), device=x.device,
                                     dtype=x.dtype) for s in seeds])
    return x + _per_sample(std, x) * noise


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, dummy_2d: bool = False) -> torch.Tensor:
    """Separable Gaussian smoothing, replicate padding, radius ceil(3 sigma). Looped over samples (and channels)
    because each has its own kernel size."""
    axes = _blur_axes(x[0], x.ndim - 2, dummy_2d)
    return _each_channel(x, sigma, 0.0, lambda xi, s: gaussian_filter(xi, s, axes, math.ceil(3 * s), mode="replicate"))


def sharpen(x: torch.Tensor, strength: torch.Tensor, dummy_2d: bool = False) -> torch.Tensor:
    """Unsharp mask x + s * (x - blur(x, sigma=1))."""
    blurred = gaussian_filter(x, 1.0, _blur_axes(x, x.ndim - 2, dummy_2d), 3, mode="replicate")
    return x + _per_sample(strength, x) * (x - blurred)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return x * _per_sample(factor, x)


def shift(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return x + _per_sample(offset, x)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """bgv2 ContrastTransform(preserve_range=True): scale around the channel mean, clip to the original range."""
    flat = x.flatten(2)
    mean = _per_channel(flat.mean(-1), x)
    low, high = (_per_channel(v, x) for v in flat.aminmax(dim=-1))
    return ((x - mean) * _per_sample(factor, x) + mean).clamp(low, high)


def simulate_lowres(x: torch.Tensor, zoom: torch.Tensor, dummy_2d: bool = False) -> torch.Tensor:
    """bgv2 SimulateLowResolutionTransform: 'nearest-exact' down to round(shape * zoom), (bi/tri)linear back up.
    Looped over samples (and channels) because every zoom gives another intermediate shape."""
    shape = x.shape[2:]
    mode = "bilinear" if len(shape) == 2 else "trilinear"

    def one(xi: torch.Tensor, z: float) -> torch.Tensor:
        small = [n if dummy_2d and a == 0 else max(round(n * z), 1) for a, n in enumerate(shape)]
        return F.interpolate(F.interpolate(xi[None], small, mode="nearest-exact"), shape, mode=mode)[0]
    return _each_channel(x, zoom, 1.0, one)


def gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """bgv2 GammaTransform(p_retain_stats=1): gamma on the channel's [min, max] range, then the channel's
    original mean and (unbiased) std are restored."""
    std, mean = torch.std_mean(x.flatten(2), dim=-1)
    low, high = x.flatten(2).aminmax(dim=-1)
    rng = high - low
    # z = ((x - low) / range) ** g, in place: one temporary instead of one per operation. bgv2's y = z * range + low
    # has mean_y = range * mean_z + low and std_y = range * std_z, so y never needs to be built.
    z = (x - _per_channel(low, x)).div_(_per_channel(rng.clamp(min=GAMMA_EPS), x)).pow_(_per_sample(g, x))
    std_z, mean_z = torch.std_mean(z.flatten(2), dim=-1)
    factor = rng * std / (rng * std_z).clamp(min=GAMMA_EPS)
    return z.sub_(_per_channel(mean_z, x)).mul_(_per_channel(factor, x)).add_(_per_channel(mean, x))


def inv_gamma(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gamma on the inverted image (bgv2 p_invert_image=1): stretches the bright end instead of the dark one."""
    return -gamma(-x, g)


# Field name -> op with the engine's uniform call (x, values, seeds, dummy_2d). The engine runs these in the
# order of params.FIELD_SPECS.
INTENSITY_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]] = {
    "noise_std": lambda x, v, seeds, d2: gaussian_noise(x, v, seeds),
    "blur_sigma": lambda x, v, seeds, d2: gaussian_blur(x, v, d2),
    "sharpen": lambda x, v, seeds, d2: sharpen(x, v, d2),
    "brightness": lambda x, v, seeds, d2: brightness(x, v),
    "shift": lambda x, v, seeds, d2: shift(x, v),
    "contrast": lambda x, v, seeds, d2: contrast(x, v),
    "lowres": lambda x, v, seeds, d2: simulate_lowres(x, v, d2),
    "inv_gamma": lambda x, v, seeds, d2: inv_gamma(x, v),
    "gamma": lambda x, v, seeds, d2: gamma(x, v),
}
