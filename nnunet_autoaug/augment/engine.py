"""Apply a batch of AugmentParams to a batch on its own device: one spatial resampling pass, then intensity ops.

Random fields too large to sample up front come from per-sample generators seeded with ``params.seed``: the
elastic noise uses ``seed``, the Gaussian intensity noise ``seed + NOISE_SEED_OFFSET``, so the two are
independent streams and a sample's output does not depend on the rest of the batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from nnunet_autoaug.augment.intensity import INTENSITY_OPS
from nnunet_autoaug.augment.params import INTENSITY_FIELDS, AugmentParams
from nnunet_autoaug.augment.spatial import centre_crop, flip_per_sample, spatial_transform

# Voxels. Smaller sigmas turn the smoothed noise into per-voxel garbage (a bug of the seed paper's settings).
ELASTIC_MIN_SIGMA: float = 5.0
NOISE_SEED_OFFSET = 1
LABEL_INTERPOLATIONS = ("linear", "nearest")


def _check_inputs(data: torch.Tensor, seg: torch.Tensor | None, params: AugmentParams, patch_size: Sequence[int],
                  dummy_2d: bool, label_interpolation: str) -> None:
    if data.ndim not in (4, 5) or len(patch_size) != data.ndim - 2:
        raise ValueError(f"data {tuple(data.shape)} does not match patch_size {tuple(patch_size)}")
    if any(i < p for i, p in zip(data.shape[2:], patch_size)):
        raise ValueError(f"input {tuple(data.shape[2:])} is smaller than patch_size {tuple(patch_size)}")
    if params.batch_size != data.shape[0]:
        raise ValueError(f"{params.batch_size} parameter rows for a batch of {data.shape[0]}")
    if seg is not None and (seg.shape[0] != data.shape[0] or seg.shape[2:] != data.shape[2:]):
        raise ValueError(f"seg {tuple(seg.shape)} does not match data {tuple(data.shape)}")
    if dummy_2d and data.ndim != 5:
        raise ValueError("dummy_2d needs 3D data")
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(f"label_interpolation must be one of {LABEL_INTERPOLATIONS}")


def _spatial(data: torch.Tensor, seg: torch.Tensor | None, params: AugmentParams, patch_size: Sequence[int],
             dummy_2d: bool, label_interpolation: str, min_elastic_sigma: float
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Map 2D, 3D and dummy-2D batches onto the k-D spatial core."""
    mirror = params.mirror > 0.5
    common = dict(elastic_alpha=params.elastic_alpha, elastic_sigma=params.elastic_sigma.clamp(min=min_elastic_sigma),
                  seeds=params.seed, label_interpolation=label_interpolation)
    if data.ndim == 4:
        return spatial_transform(data, seg, patch_size, scale=params.scale[:, :2], rotation=params.rotation[:, 0],
                                 mirror=mirror[:, :2], **common)
    if not dummy_2d:
        return spatial_transform(data, seg, patch_size, scale=params.scale, rotation=params.rotation,
                                 mirror=mirror, **common)
    # Dummy 2D: axis 0 is cropped exactly and folded into the channels, so that every output slice comes from exactly
    # one input slice and all slices of a sample share one 2D transform (as in nnU-Net). For the same reason
    # mirroring axis 0 commutes with the transform, so it flips the output instead of a copy of the input.
    def fold(x: torch.Tensor) -> torch.Tensor:
        return centre_crop(x.movedim(2, -1), patch_size[:1]).movedim(-1, 2).flatten(1, 2)

    def unfold(x: torch.Tensor, channels: int) -> torch.Tensor:
        return flip_per_sample(x.view(x.shape[0], channels, *patch_size), mirror[:, :1])

    out, seg_out = spatial_transform(fold(data), None if seg is None else fold(seg), patch_size[1:],
                                     scale=params.scale[:, 1:], rotation=params.rotation[:, 0],
                                     mirror=mirror[:, 1:], **common)
    return unfold(out, data.shape[1]), None if seg_out is None else unfold(seg_out, seg.shape[1])


def augment_batch(data: torch.Tensor, seg: torch.Tensor | None, params: AugmentParams, patch_size: Sequence[int], *,
                  dummy_2d: bool = False, label_interpolation: str = "linear",
                  min_elastic_sigma: float = ELASTIC_MIN_SIGMA) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment ``data`` (B, C, *in_shape) and ``seg`` (B, S, *in_shape) into (B, ., *patch_size) on data.device.

    Every label channel of ``seg`` is resampled alike (S = 2 in nnU-Net's cascade: target and previous stage).

    ``in_shape >= patch_size``: the centre of the input is the output's centre, and the margin lets rotations and
    zoom-outs sample real image instead of padding. Labels sampled from outside the input become -1. The inputs
    are not modified.
    """
    _check_inputs(data, seg, params, patch_size, dummy_2d, label_interpolation)
    out, seg_out = _spatial(data, seg, params, patch_size, dummy_2d, label_interpolation, min_elastic_sigma)
    noise_seeds = params.seed + NOISE_SEED_OFFSET
    for name in INTENSITY_FIELDS:
        rows = (~params.is_identity(name)).nonzero().flatten()
        if rows.numel() == params.batch_size:  # the whole batch: no gather and scatter copies
            out = INTENSITY_OPS[name](out, getattr(params, name), noise_seeds, dummy_2d)
        elif rows.numel():
            idx = rows.to(data.device)
            out[idx] = INTENSITY_OPS[name](out[idx], getattr(params, name)[rows], noise_seeds[rows], dummy_2d)
    return out, seg_out
