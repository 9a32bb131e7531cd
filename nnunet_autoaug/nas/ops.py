"""The 8 candidate operations of SCNAS, in 3D and 2D.

Every op maps C channels to C channels at stride 1: resolution changes happen in the cells' input preprocessing
(see cells.py), so one op table serves all four cell types and anisotropic nnU-Net strides need no special ops.
"""
from __future__ import annotations

import torch
from torch import nn

PRIMITIVES = ("zero", "identity", "max_pool_3", "avg_pool_3", "conv_3",
              "dil_sep_conv_3_r2", "dil_sep_conv_3_r3", "dil_sep_conv_3_r4")
ZERO = PRIMITIVES.index("zero")
_DILATIONS = {"dil_sep_conv_3_r2": 2, "dil_sep_conv_3_r3": 3, "dil_sep_conv_3_r4": 4}


def conv_class(dim: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dim]


def conv_transpose_class(dim: int) -> type[nn.Module]:
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dim]


def instance_norm(dim: int, channels: int, affine: bool = True) -> nn.Module:
    return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, eps=1e-5, affine=affine)


def nonlinearity() -> nn.Module:
    # not inplace: an op's input is shared by up to 8 ops on the same edge and by later nodes
    return nn.LeakyReLU(negative_slope=1e-2)


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand_as(x)  # no memory, and no gradient path to x


class ActConvNorm(nn.Sequential):
    """LeakyReLU -> 3^d conv -> InstanceNorm (the paper's conv op)."""

    def __init__(self, channels: int, dim: int):
        super().__init__(nonlinearity(), conv_class(dim)(channels, channels, 3, padding=1, bias=False),
                         instance_norm(dim, channels))


class ActDilSepConvNorm(nn.Sequential):
    """LeakyReLU -> depthwise dilated 3^d conv -> pointwise conv -> InstanceNorm."""

    def __init__(self, channels: int, dim: int, dilation: int):
        conv = conv_class(dim)
        super().__init__(nonlinearity(),
                         conv(channels, channels, 3, padding=dilation, dilation=dilation, groups=channels, bias=False),
                         conv(channels, channels, 1, bias=False), instance_norm(dim, channels))


def make_op(name: str, channels: int, dim: int, search: bool = False) -> nn.Module:
    """One candidate op. ``search``: pooling gets a non-affine InstanceNorm, as DARTS' supernet does, so that
    parameter-free ops are on the same scale as the normalised conv ops while the weights are mixed."""
    if name == "zero":
        return Zero()
    if name == "identity":
        return nn.Identity()
    if name in ("max_pool_3", "avg_pool_3"):
        pool = ({2: nn.MaxPool2d, 3: nn.MaxPool3d}[dim](3, stride=1, padding=1) if name == "max_pool_3" else
                {2: nn.AvgPool2d, 3: nn.AvgPool3d}[dim](3, stride=1, padding=1, count_include_pad=False))
        return nn.Sequential(pool, instance_norm(dim, channels, affine=False)) if search else pool
    if name == "conv_3":
        return ActConvNorm(channels, dim)
    if name in _DILATIONS:
        return ActDilSepConvNorm(channels, dim, _DILATIONS[name])
    raise ValueError(f"unknown SCNAS op {name!r}; valid ops: {', '.join(PRIMITIVES)}")
