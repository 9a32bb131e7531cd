"""The search-only SCNAS supernet (as MONAI DiNTS separates TopologySearch from TopologyInstance).

All cells of a type share one alpha matrix (edges x ops). Each training forward draws, per cell type and edge,
two ops by Gumbel-top-2 and runs only those; ``sample_mode = "all"`` runs every op (DARTS) for comparison.
In eval mode the two most likely ops run, without noise.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_autoaug.nas.cells import SearchCell
from nnunet_autoaug.nas.genotype import CELL_TYPES, Genotype, derive_genotype, n_edges
from nnunet_autoaug.nas.macro import CellSpec, SCNASDecoder, SCNASEncoder
from nnunet_autoaug.nas.network import DEFAULT_MAX_NODE_CHANNELS
from nnunet_autoaug.nas.ops import PRIMITIVES
from nnunet_autoaug.nas.sampling import all_ops, gumbel_top2, strongest_two

ALPHA_PREFIX = "alphas."


class SCNASSupernet(nn.Module):
    def __init__(self, input_channels: int, num_classes: int, strides: list, stem_channels: int = 48,
                 max_node_channels: int = DEFAULT_MAX_NODE_CHANNELS, deep_supervision: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.dim = len(strides[0])
        self.tau = 1.0
        self.sample_mode = "gumbel_top2"
        self.generator = generator
        # DARTS' initialisation: near-uniform, with a little noise to break ties
        self.alphas = nn.ParameterDict({t: nn.Parameter(1e-3 * torch.randn(n_edges(), len(PRIMITIVES)))
                                        for t in CELL_TYPES})

        def make_cell(spec: CellSpec, in_channels: tuple, factors: tuple, channels: int) -> nn.Module:
            return SearchCell(in_channels, factors, channels, self.dim)

        self.encoder = SCNASEncoder(input_channels, self.dim, strides, stem_channels, max_node_channels, make_cell)
        self.decoder = SCNASDecoder(self.encoder, num_classes, self.dim, strides, stem_channels, max_node_channels,
                                    make_cell, deep_supervision)
        self.last_arch: dict = {}

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alphas.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith(ALPHA_PREFIX)]

    def sample_arch(self) -> dict:
        """Per cell type: (ops, weights), each (edges, k)."""
        if self.sample_mode == "all":
            return {t: all_ops(a) for t, a in self.alphas.items()}
        if not self.training:
            return {t: strongest_two(a, self.tau) for t, a in self.alphas.items()}
        return {t: gumbel_top2(a, self.tau, self.generator) for t, a in self.alphas.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        self.last_arch = arch = self.sample_arch()
        return self.decoder(self.encoder(x, arch), arch)

    def genotype(self) -> Genotype:
        return derive_genotype(dict(self.alphas.items()), self.dim)

    def probabilities(self) -> dict[str, list[list[float]]]:
        return {t: torch.softmax(a.detach().float().cpu(), -1).tolist() for t, a in self.alphas.items()}
