"""The two batch streams of the regression trainers (main process, no workers: whole small images are in memory)."""
from __future__ import annotations

import torch

from nnunet_autoaug.regression.data import CaseImages
from nnunet_autoaug.regression.hydra import assemble_batch, sample_flips, sample_virtual_sets, set_targets


class VirtualSetLoader:
    """Endless training batches: ``num_sets`` virtual sets of ``set_size`` images laid out as one batch.

    All randomness comes from ``generator`` and is drawn in ``__next__``, so a checkpointed generator state resumes
    the exact stream (nothing is prefetched).
    """

    def __init__(self, cases: CaseImages, targets: torch.Tensor, set_size: int, num_sets: int,
                 blank_probability: float, generator: torch.Generator, mirror_axes: tuple[int, ...] = ()):
        self.cases, self.targets, self.generator = cases, targets, generator
        self.set_size, self.num_sets, self.blank_probability = set_size, num_sets, blank_probability
        self.mirror_axes = tuple(mirror_axes)
        self.empty = cases.empty_image()
        sample_virtual_sets(len(cases.keys), 1, set_size, blank_probability, torch.Generator())  # validate now

    def __iter__(self) -> VirtualSetLoader:
        return self

    def __next__(self) -> dict:
        sets = sample_virtual_sets(len(self.cases.keys), self.num_sets, self.set_size, self.blank_probability,
                                   self.generator)
        flips = sample_flips(sets.indices.numel(), len(self.mirror_axes), self.generator) if self.mirror_axes \
            else None
        data = assemble_batch(self.cases.images, sets, self.empty, flips, self.mirror_axes)
        return {"data": data, "target": set_targets(self.targets, sets), "sets": sets,
                "keys": [self.cases.keys[i] for i in sets.indices.reshape(-1).tolist()]}


class CaseBatchLoader:
    """Whole cases in a fixed order, ``batch_size`` at a time; after the last (shorter) batch it starts over."""

    def __init__(self, cases: CaseImages, targets: torch.Tensor, batch_size: int):
        self.cases, self.targets, self.batch_size = cases, targets, batch_size
        self.position = 0

    def __len__(self) -> int:
        return (len(self.cases.keys) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> CaseBatchLoader:
        return self

    def __next__(self) -> dict:
        rows = slice(self.position, min(self.position + self.batch_size, len(self.cases.keys)))
        self.position = rows.stop % len(self.cases.keys)
        return {"data": self.cases.images[rows], "target": self.targets[rows], "keys": self.cases.keys[rows]}
