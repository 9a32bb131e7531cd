"""Batched training targets from an augmented label map, identical to nnU-Net's batchgeneratorsv2 transforms
(DownsampleSegForDSTransform, ConvertSegmentationToRegionsTransform, RemoveLabelTransform(-1, 0)) but applied
to the whole batch (B, C, *spatial) at once on its device."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def deep_supervision_targets(seg: torch.Tensor, scales: Sequence[Sequence[float] | float]) -> list[torch.Tensor]:
    """One target per deep-supervision scale: shape round(shape * scale), 'nearest-exact' like bgv2.

    A scale of all ones returns ``seg`` itself (no copy), as bgv2 does.
    """
    n_spatial = seg.ndim - 2
    seg_float = None  # shared by all scales; interpolate has no kernels for small integer dtypes
    targets = []
    for s in scales:
        s = [s] * n_spatial if isinstance(s, (int, float)) else list(s)
        if len(s) != n_spatial:
            raise ValueError(f"scale {s} does not match {n_spatial} spatial axes")
        if all(i == 1 for i in s):
            targets.append(seg)
            continue
        if seg_float is None:
            seg_float = seg.float()
        shape = [round(n * f) for n, f in zip(seg.shape[2:], s)]
        targets.append(F.interpolate(seg_float, shape, mode="nearest-exact").to(seg.dtype))
    return targets


def segmentation_to_regions(seg: torch.Tensor, regions: Sequence[Sequence[int] | int]) -> torch.Tensor:
    """Bool (B, len(regions), *spatial): channel r is True where seg channel 0 holds one of regions[r]'s labels."""
    out = torch.zeros((seg.shape[0], len(regions), *seg.shape[2:]), dtype=torch.bool, device=seg.device)
    for r, labels in enumerate(regions):
        labels = [labels] if isinstance(labels, int) else list(labels)
        out[:, r] = torch.isin(seg[:, 0], torch.tensor(labels, dtype=seg.dtype, device=seg.device))
    return out


def remove_padding_label(seg: torch.Tensor) -> torch.Tensor:
    """Map the padding label -1 to background 0 (nnU-Net's RemoveLabelTransform(-1, 0)); returns a new tensor."""
    return seg.masked_fill(seg == -1, 0)
