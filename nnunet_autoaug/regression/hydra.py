"""Hydranet's virtual samples (Dubost et al., MICCAI 2018), with sampling kept apart from application.

A virtual sample is a set of ``set_size`` distinct training images; each member is independently replaced by an
empty image with probability ``blank_probability``. Its target is the sum of the labels of the members that were
not blanked; its prediction is the sum of the base regressor's predictions on all members. Rather than replicating
the network once per member (shared weights, outputs summed), the k sets of a step are laid out as one batch of
k * n images and the n predictions of each set are summed after the forward pass: the same outputs and gradients
with one network (the paper's recommendation for large 3D inputs).

``sample_virtual_sets`` and ``sample_flips`` only draw (from an explicit ``torch.Generator``);
``assemble_batch``, ``set_targets``, ``sum_over_sets`` and ``SetSumLoss`` are deterministic given the draw.
With ``set_size=1, blank_probability=0`` the same code trains the plain base regressor.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class VirtualSets:
    """k virtual samples of n members: ``indices[s, j]`` is a training case, ``blank[s, j]`` replaces it."""

    indices: torch.Tensor  # (k, n) int64, distinct within a row
    blank: torch.Tensor  # (k, n) bool

    @property
    def set_size(self) -> int:
        return self.indices.shape[1]


def sample_virtual_sets(num_cases: int, num_sets: int, set_size: int, blank_probability: float,
                        generator: torch.Generator) -> VirtualSets:
    """Draw ``num_sets`` sets of ``set_size`` cases without replacement inside a set, and their blank masks."""
    if not 1 <= set_size <= num_cases:
        raise ValueError(f"a set of {set_size} distinct images needs at least {set_size} training cases, "
                         f"there are {num_cases}")
    if not 0.0 <= blank_probability < 1.0:
        raise ValueError(f"blank_probability must be in [0, 1), got {blank_probability}")
    # the first n of a uniformly random permutation per set = n draws without replacement
    order = torch.rand(num_sets, num_cases, generator=generator).argsort(dim=1)
    blank = torch.rand(num_sets, set_size, generator=generator) < blank_probability
    return VirtualSets(order[:, :set_size].contiguous(), blank)


def sample_flips(num_images: int, num_axes: int, generator: torch.Generator) -> torch.Tensor:
    """(num_images, num_axes) bool: mirror image i along axis a (label-preserving conventional augmentation)."""
    return torch.rand(num_images, num_axes, generator=generator) < 0.5


def set_targets(targets: torch.Tensor, sets: VirtualSets) -> torch.Tensor:
    """(k,) sum of the per-case targets of each set's members that were not blanked."""
    return torch.where(sets.blank, torch.zeros((), dtype=targets.dtype), targets[sets.indices]).sum(dim=1)


def assemble_batch(images: torch.Tensor, sets: VirtualSets, empty_image: torch.Tensor,
                   flips: torch.Tensor | None = None, axes: tuple[int, ...] = ()) -> torch.Tensor:
    """(k * n, C, *spatial): set s occupies rows s*n .. s*n+n-1; blanked members are ``empty_image``.

    ``images`` is (N, C, *spatial) for all training cases, ``empty_image`` is (C, *spatial). ``flips`` (from
    ``sample_flips`` over the k * n rows) mirrors rows along the spatial ``axes`` (0 = first spatial axis).
    """
    batch = images[sets.indices.reshape(-1)].clone()
    batch[sets.blank.reshape(-1)] = empty_image.to(batch.dtype)
    if flips is not None:
        for a, axis in enumerate(axes):
            rows = flips[:, a]
            if rows.any():
                batch[rows] = batch[rows].flip(axis + 2)
    return batch


def sum_over_sets(predictions: torch.Tensor, set_size: int) -> torch.Tensor:
    """(k * n,) per-image predictions -> (k,) per-set sums (rows laid out as in ``assemble_batch``)."""
    return predictions.reshape(-1, set_size).sum(dim=1)


class SetSumLoss(nn.Module):
    """Squared error of the set sums, divided by the set size: ((sum f(x_i) - sum y_i) / n) ** 2, set-averaged.

    The division keeps the loss on the per-image scale whatever n is (the label of a set is about n (1 - p) times
    that of one image), so learning rates tuned for single images still fit. n = 1 is the plain MSE.
    """

    def __init__(self, set_size: int):
        super().__init__()
        self.set_size = set_size

    def forward(self, predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sums = sum_over_sets(predictions.float(), self.set_size)
        return (((sums - targets.float()) / self.set_size) ** 2).mean()
