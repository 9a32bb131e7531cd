"""The final SCNAS network, built from a genotype and nnU-Net's plans; nnU-Net constructs it at predict time.

A registered plans configuration names this class in ``architecture.network_class_name`` and gives its arguments in
``arch_kwargs`` (see plans.py), so stock ``nnUNetv2_predict`` rebuilds it like any nnU-Net network.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_autoaug.nas.cells import FixedCell
from nnunet_autoaug.nas.genotype import Genotype
from nnunet_autoaug.nas.macro import CellSpec, SCNASDecoder, SCNASEncoder

DEFAULT_MAX_NODE_CHANNELS = 128


class SCNASUNet(nn.Module):
    """U-Net of SCNAS cells; returns nnU-Net's deep-supervision list (highest resolution first) or one tensor.

    Args:
        input_channels, num_classes, deep_supervision: supplied by nnU-Net.
        genotype: a Genotype or its JSON dict (plans carry the dict).
        strides: nnU-Net's per-stage pooling strides (``arch_kwargs['strides']`` of the base configuration).
        stem_channels: width of the stem (paper: 68 for retraining); nodes double per level up to
            ``max_node_channels``.

    Examples:
        >>> net = SCNASUNet(1, 3, genotype, [[1, 1, 1], [2, 2, 2], [2, 2, 2]], stem_channels=8)
        >>> [o.shape[2:] for o in net(torch.zeros(1, 1, 32, 32, 32))]
        [torch.Size([32, 32, 32]), torch.Size([16, 16, 16])]
    """

    def __init__(self, input_channels: int, num_classes: int, genotype: Genotype | dict, strides: list,
                 stem_channels: int = 68, max_node_channels: int = DEFAULT_MAX_NODE_CHANNELS,
                 deep_supervision: bool = False):
        super().__init__()
        self.genotype = genotype if isinstance(genotype, Genotype) else Genotype.from_dict(genotype)
        dim = len(strides[0])
        if dim != self.genotype.dim:
            raise ValueError(f"a {self.genotype.dim}D genotype cannot build a {dim}D network (strides {strides})")

        def make_cell(spec: CellSpec, in_channels: tuple, factors: tuple, channels: int) -> nn.Module:
            return FixedCell(self.genotype.cells[spec.cell_type], in_channels, factors, channels, dim)

        self.encoder = SCNASEncoder(input_channels, dim, strides, stem_channels, max_node_channels, make_cell)
        self.decoder = SCNASDecoder(self.encoder, num_classes, dim, strides, stem_channels, max_node_channels,
                                    make_cell, deep_supervision)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.decoder(self.encoder(x, {}), {})
