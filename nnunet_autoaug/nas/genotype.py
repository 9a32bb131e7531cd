"""The searched architecture as plain data: which two (op, input) pairs feed each node of each cell type.

A genotype is what the search writes (``scnas_genotype.json``), what a plans configuration carries, and what the
final network is built from. JSON errors name the problem and how to fix it, because genotype files travel between
datasets (transfer) and get edited by hand.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.nas.ops import PRIMITIVES, ZERO
from nnunet_autoaug.policy.policy import file_in_folder

CELL_TYPES = ("encoder_normal", "reduction", "decoder_normal", "expansion")
N_NODES = 4
N_INPUTS = 2  # the outputs of the previous two cells
FORMAT = "scnas-genotype"
VERSION = 1
GENOTYPE_FILE = "scnas_genotype.json"  # what nnUNetTrainerSCNASSearch writes into its fold folder

Edge = tuple[str, int]  # (op name, input state index: 0, 1 = cell inputs, 2.. = earlier nodes)
Cell = tuple[tuple[Edge, Edge], ...]  # one pair of edges per intermediate node


class GenotypeError(ValueError):
    """A genotype (file or dict) that cannot describe an SCNAS network."""


def n_edges(n_nodes: int = N_NODES) -> int:
    """Edges of the dense cell DAG: node j sees both inputs and the j earlier nodes."""
    return sum(N_INPUTS + j for j in range(n_nodes))


def edge_index(node: int, state: int) -> int:
    """Row of (node, input state) in an alpha matrix of shape (n_edges, len(PRIMITIVES))."""
    return sum(N_INPUTS + j for j in range(node)) + state


@dataclass(frozen=True)
class Genotype:
    """Spatial dimension plus, per cell type, each node's two strongest (op, input) edges.

    Examples:
        >>> g = Genotype.from_json(Path("scnas_genotype.json").read_text())
        >>> g.cells["reduction"][0]
        (('conv_3', 0), ('max_pool_3', 1))
    """

    dim: int
    cells: dict[str, Cell]

    def __post_init__(self) -> None:
        validate(self.to_dict())

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "dim": self.dim, "n_nodes": N_NODES,
                "cells": {t: [[list(e) for e in node] for node in self.cells[t]] for t in CELL_TYPES}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict, source: str = "genotype") -> Genotype:
        validate(data, source)
        cells = {t: tuple(tuple((op, state) for op, state in node) for node in data["cells"][t]) for t in CELL_TYPES}
        return cls(int(data["dim"]), cells)

    @classmethod
    def from_json(cls, text: str, source: str = "genotype") -> Genotype:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GenotypeError(f"{source} is not valid JSON ({e}). Use the scnas_genotype.json written by "
                                f"nnUNetTrainerSCNASSearch in its fold folder.") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        """A genotype JSON file, or the search's fold folder holding one."""
        path = file_in_folder(path, (GENOTYPE_FILE,), "genotype", GenotypeError,
                              f"e.g. the {GENOTYPE_FILE} that nnUNetTrainerSCNASSearch writes into its fold folder, "
                              f"or that folder")
        return cls.from_json(path.read_text(), str(path))

    def save(self, path: str | Path) -> None:
        write_text_atomically(path, self.to_json() + "\n")


def validate(data: object, source: str = "genotype") -> None:
    """Raise GenotypeError naming the first problem in a genotype dict, and how to fix it."""
    def fail(problem: str, fix: str) -> None:
        raise GenotypeError(f"{source}: {problem}. {fix}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}", "Pass a genotype written by the SCNAS search.")
    if data.get("format", FORMAT) != FORMAT:
        fail(f"format is {data.get('format')!r}, not {FORMAT!r}", "This is not an SCNAS genotype file.")
    if data.get("dim") not in (2, 3):
        fail(f"'dim' must be 2 or 3, got {data.get('dim')!r}", "Set it to the spatial dimension the genotype was "
             "searched for (3 for 3d_fullres/3d_lowres, 2 for 2d).")
    if data.get("n_nodes", N_NODES) != N_NODES:
        fail(f"'n_nodes' is {data.get('n_nodes')}, but SCNAS cells have {N_NODES} intermediate nodes",
             "Re-derive the genotype with this version of nnunet_autoaug.")
    cells = data.get("cells")
    if not isinstance(cells, dict) or set(cells) != set(CELL_TYPES):
        got = sorted(cells) if isinstance(cells, dict) else cells
        fail(f"'cells' must map exactly the cell types {list(CELL_TYPES)}, got {got}",
             "Every cell type needs its own list of nodes.")
    for cell_type in CELL_TYPES:
        nodes = cells[cell_type]
        if not isinstance(nodes, (list, tuple)) or len(nodes) != N_NODES:
            n = len(nodes) if isinstance(nodes, (list, tuple)) else nodes
            fail(f"cell {cell_type!r} has {n} nodes, expected {N_NODES}",
                 f"List {N_NODES} nodes, each as [[op, input], [op, input]].")
        for j, node in enumerate(nodes):
            where = f"cell {cell_type!r} node {j}"
            if not isinstance(node, (list, tuple)) or len(node) != 2:
                fail(f"{where} must have exactly 2 input edges, got {node!r}",
                     "Write it as [[op, input], [op, input]].")
            inputs = []
            for edge in node:
                if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                    fail(f"{where}: edge {edge!r} is not a pair", "Write each edge as [op name, input index].")
                op, state = edge
                if op not in PRIMITIVES or op == PRIMITIVES[ZERO]:
                    fail(f"{where}: unknown op {op!r}",
                         f"Use one of {', '.join(p for p in PRIMITIVES if p != PRIMITIVES[ZERO])}.")
                if isinstance(state, bool) or not isinstance(state, int) or not 0 <= state < N_INPUTS + j:
                    fail(f"{where}: input {state!r} is out of range", f"Node {j} can read states 0..{N_INPUTS + j - 1} "
                         f"(0, 1: the cell inputs; 2+k: node k).")
                inputs.append(state)
            if inputs[0] == inputs[1]:
                fail(f"{where} reads state {inputs[0]} twice", "The DARTS rule keeps two distinct inputs per node.")


def derive_genotype(alphas: dict[str, torch.Tensor], dim: int) -> Genotype:
    """DARTS rule: per node, the 2 inputs whose strongest non-zero op is most likely; on each, that op.

    Deterministic: ties go to the lower input index and the earlier op in PRIMITIVES.
    """
    cells = {}
    for cell_type in CELL_TYPES:
        probs = torch.softmax(alphas[cell_type].detach().double().cpu(), dim=-1)
        probs[:, ZERO] = -1.0  # zero is a candidate during the search, never in the final network
        nodes = []
        for j in range(N_NODES):
            rows = probs[edge_index(j, 0):edge_index(j, 0) + N_INPUTS + j]
            strength = rows.max(dim=1).values.tolist()
            keep = sorted(sorted(range(len(strength)), key=lambda i: -strength[i])[:2])
            nodes.append(tuple((PRIMITIVES[_first_argmax(rows[i].tolist())], i) for i in keep))
        cells[cell_type] = tuple(nodes)
    return Genotype(dim, cells)


def _first_argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))
