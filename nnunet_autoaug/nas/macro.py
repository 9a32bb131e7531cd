"""The U-Net-like macro structure shared by the supernet and the final network, laid out from nnU-Net's plans.

For n stages (levels 0..n-1, strides from the plans) the cells run in DARTS fashion, each reading the outputs of
the previous two cells::

    stem -> [encoder_normal(l), reduction(l+1)] for l = 0..n-2
         -> [expansion(l), inter(l), decoder_normal(l)] for l = n-2..0

The inter-cell (an encoder-normal cell with its own weights) sits on the skip path: it reads the encoder-normal
cell of its level and that cell's input; the decoder-normal cell merges it with the expansion cell. Every decoder
level has a 1x1 segmentation head, so the outputs match nnU-Net's deep supervision (n-1 outputs, highest
resolution first).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nnunet_autoaug.nas.ops import conv_class, instance_norm

Arch = dict  # cell type -> (ops, weights) for supernet cells; empty for the final network


@dataclass(frozen=True)
class CellSpec:
    role: str  # encoder_normal, reduction, expansion, inter, decoder_normal
    level: int
    inputs: tuple[int, int]  # indices into the list of states (0: the stem)

    @property
    def cell_type(self) -> str:
        """Which genotype the cell uses: the inter-cell is a copy of the encoder-normal cell."""
        return "encoder_normal" if self.role == "inter" else self.role


def cell_plan(n_stages: int) -> tuple[list[CellSpec], list[CellSpec]]:
    """(encoder cells, decoder cells); the state a cell produces is 1 + its position in encoder + decoder."""
    encoder, decoder = [], []
    prev = cur = 0
    skip_inputs, skips = {}, {}
    for level in range(n_stages - 1):
        encoder.append(CellSpec("encoder_normal", level, (prev, cur)))
        skip_inputs[level], skips[level] = cur, len(encoder)
        prev, cur = cur, len(encoder)
        encoder.append(CellSpec("reduction", level + 1, (prev, cur)))
        prev, cur = cur, len(encoder)
    for level in range(n_stages - 2, -1, -1):
        for role, inputs in (("expansion", (prev, cur)), ("inter", (skip_inputs[level], skips[level]))):
            decoder.append(CellSpec(role, level, inputs))
        expansion, inter = len(encoder) + len(decoder) - 1, len(encoder) + len(decoder)
        decoder.append(CellSpec("decoder_normal", level, (inter, expansion)))
        prev, cur = expansion, len(encoder) + len(decoder)
    return encoder, decoder


def level_scales(strides: list) -> np.ndarray:
    """(levels, dim): total downsampling of each level relative to the input."""
    strides = np.asarray(strides, dtype=float)
    if strides.ndim != 2 or not np.all(strides[0] == 1):
        raise ValueError(f"SCNAS needs per-stage strides starting with all ones (nnU-Net plans do), got "
                         f"{strides.tolist()}")
    return np.cumprod(strides, axis=0)


def node_channels(level: int, stem_channels: int, max_node_channels: int) -> int:
    """Width of each intermediate node at a level: doubles per level like nnU-Net's features, up to a cap."""
    return min(stem_channels * 2 ** level, max_node_channels)


class SCNASEncoder(nn.Module):
    def __init__(self, input_channels: int, dim: int, strides: list, stem_channels: int, max_node_channels: int,
                 make_cell: Callable[..., nn.Module]):
        super().__init__()
        self.specs, _ = cell_plan(len(strides))
        self.stem = nn.Sequential(conv_class(dim)(input_channels, stem_channels, 3, padding=1, bias=False),
                                  instance_norm(dim, stem_channels))
        scales = level_scales(strides)
        self.state_levels, self.state_channels = [0], [stem_channels]
        self.cells = nn.ModuleList()
        for spec in self.specs:
            self.cells.append(_build(spec, make_cell, self.state_levels, self.state_channels, scales, stem_channels,
                                     max_node_channels))

    def forward(self, x: torch.Tensor, arch: Arch) -> list[torch.Tensor]:
        states = [self.stem(x)]
        for spec, cell in zip(self.specs, self.cells):
            states.append(_run(cell, spec, states, arch))
        return states


class SCNASDecoder(nn.Module):
    def __init__(self, encoder: SCNASEncoder, num_classes: int, dim: int, strides: list, stem_channels: int,
                 max_node_channels: int, make_cell: Callable[..., nn.Module], deep_supervision: bool):
        super().__init__()
        _, self.specs = cell_plan(len(strides))
        self.deep_supervision = deep_supervision  # nnU-Net's set_deep_supervision_enabled sets this attribute
        scales = level_scales(strides)
        levels, channels = list(encoder.state_levels), list(encoder.state_channels)
        self.cells = nn.ModuleList(_build(spec, make_cell, levels, channels, scales, stem_channels, max_node_channels)
                                   for spec in self.specs)
        # built for every level, DS on or off, so that checkpoints load either way (as nnU-Net's decoder does)
        outputs = {s.level: self.cells[i].out_channels for i, s in enumerate(self.specs) if s.role == "decoder_normal"}
        self.seg_layers = nn.ModuleList(conv_class(dim)(outputs[level], num_classes, 1) for level in sorted(outputs))
        self.output_states = [len(encoder.specs) + 1 + i for i, s in enumerate(self.specs)
                              if s.role == "decoder_normal"]

    def forward(self, states: list[torch.Tensor], arch: Arch) -> torch.Tensor | list[torch.Tensor]:
        states = list(states)
        for spec, cell in zip(self.specs, self.cells):
            states.append(_run(cell, spec, states, arch))
        finest_first = self.output_states[::-1]
        if not self.deep_supervision:
            return self.seg_layers[0](states[finest_first[0]])
        return [head(states[s]) for head, s in zip(self.seg_layers, finest_first)]


def _build(spec: CellSpec, make_cell: Callable[..., nn.Module], levels: list[int], channels: list[int],
           scales: np.ndarray, stem_channels: int, max_node_channels: int) -> nn.Module:
    """Create a cell and record the level and width of the state it produces."""
    factors = tuple(tuple(scales[spec.level] / scales[levels[i]]) for i in spec.inputs)
    cell = make_cell(spec, tuple(channels[i] for i in spec.inputs), factors,
                     node_channels(spec.level, stem_channels, max_node_channels))
    levels.append(spec.level)
    channels.append(cell.out_channels)
    return cell


def _run(cell: nn.Module, spec: CellSpec, states: list[torch.Tensor], arch: Arch) -> torch.Tensor:
    a, b = (states[i] for i in spec.inputs)
    return cell(a, b, *arch[spec.cell_type]) if arch else cell(a, b)
