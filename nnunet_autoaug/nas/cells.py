"""SCNAS cells: a DAG of 2 inputs and 4 intermediate nodes whose output is the channel concat of the nodes.

Inputs arrive at any resolution level; each is brought to the cell's level and width by a LeakyReLU -> resampling
conv -> InstanceNorm preprocessing (strided conv down, transposed conv up, 1x1 otherwise), with kernel = stride so
anisotropic nnU-Net strides are reproduced exactly. Reduction and expansion cells are the cells whose inputs are
resampled; their ops (like every op) then run at stride 1.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from nnunet_autoaug.nas.genotype import N_INPUTS, N_NODES, Cell, edge_index, n_edges
from nnunet_autoaug.nas.ops import (
    PRIMITIVES,
    ZERO,
    conv_class,
    conv_transpose_class,
    instance_norm,
    make_op,
    nonlinearity,
)


def resample(in_channels: int, out_channels: int, dim: int, factor: tuple[float, ...]) -> nn.Module:
    """LeakyReLU -> conv (1x1, strided by ``factor`` > 1 or transposed for ``factor`` < 1) -> InstanceNorm."""
    factor = np.asarray(factor, dtype=float)
    if np.all(factor == 1):
        conv = conv_class(dim)(in_channels, out_channels, 1, bias=False)
    elif np.all(factor >= 1):
        k = tuple(round(f) for f in factor)
        conv = conv_class(dim)(in_channels, out_channels, k, stride=k, bias=False)
    elif np.all(factor <= 1):
        k = tuple(round(1 / f) for f in factor)
        conv = conv_transpose_class(dim)(in_channels, out_channels, k, stride=k, bias=False)
    else:
        raise ValueError(f"cannot resample by {factor.tolist()}: an axis cannot shrink while another grows")
    return nn.Sequential(nonlinearity(), conv, instance_norm(dim, out_channels))


class _CellBase(nn.Module):
    def __init__(self, in_channels: tuple[int, int], factors: tuple[tuple, tuple], channels: int, dim: int):
        super().__init__()
        self.preprocess = nn.ModuleList(resample(c, channels, dim, f) for c, f in zip(in_channels, factors))
        self.out_channels = N_NODES * channels

    def _inputs(self, s0: torch.Tensor, s1: torch.Tensor) -> list[torch.Tensor]:
        return [p(s) for p, s in zip(self.preprocess, (s0, s1))]


class SearchCell(_CellBase):
    """Supernet cell: every edge holds all candidate ops; the forward runs only the ops it is told to."""

    def __init__(self, in_channels: tuple[int, int], factors: tuple[tuple, tuple], channels: int, dim: int):
        super().__init__(in_channels, factors, channels, dim)
        self.edges = nn.ModuleList(nn.ModuleList(make_op(p, channels, dim, search=True) for p in PRIMITIVES)
                                   for _ in range(n_edges()))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, ops: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``ops``: (n_edges, k) op indices to run per edge; ``weights``: (n_edges, k) their mixing weights."""
        states = self._inputs(s0, s1)
        op_list = ops.tolist()  # one host sync per cell, not per edge
        for j in range(N_NODES):
            terms = []
            for i in range(N_INPUTS + j):
                e = edge_index(j, i)
                for k, o in enumerate(op_list[e]):
                    if o != ZERO:  # zero contributes nothing, and w * 0 has no gradient either
                        terms.append(weights[e, k] * self.edges[e][o](states[i]))
            states.append(sum(terms[1:], terms[0]))  # two distinct ops per edge: never all zero
        return torch.cat(states[N_INPUTS:], dim=1)


class FixedCell(_CellBase):
    """Cell of the final network: each node sums its two genotype ops."""

    def __init__(self, genotype_cell: Cell, in_channels: tuple[int, int], factors: tuple[tuple, tuple],
                 channels: int, dim: int):
        super().__init__(in_channels, factors, channels, dim)
        self.inputs = [[state for _, state in node] for node in genotype_cell]
        self.ops = nn.ModuleList(nn.ModuleList(make_op(op, channels, dim) for op, _ in node) for node in genotype_cell)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = self._inputs(s0, s1)
        for ops, inputs in zip(self.ops, self.inputs):
            states.append(ops[0](states[inputs[0]]) + ops[1](states[inputs[1]]))
        return torch.cat(states[N_INPUTS:], dim=1)
