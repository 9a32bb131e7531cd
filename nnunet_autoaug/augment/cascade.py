"""Inputs of nnU-Net's cascade (3d_cascade_fullres) from the engine's output.

nnU-Net's loader crops the previous stage's segmentation as a second label channel; its pipeline transforms it with
the target, then appends it to the image as one one-hot channel per foreground label and corrupts those channels at
random (morphological operators, removed components), so that the network does not trust the low-resolution
prediction blindly. The engine already transforms every label channel alike; this module does the rest with
nnU-Net's own corruption transforms, taken from its pipeline so that their constants stay nnU-Net's.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from batchgeneratorsv2.transforms.nnunet.random_binary_operator import ApplyRandomBinaryOperatorTransform
from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
    RemoveRandomConnectedComponentFromOneHotEncodingTransform,
)
from batchgeneratorsv2.transforms.utils.random import RandomTransform

CORRUPTIONS = (ApplyRandomBinaryOperatorTransform, RemoveRandomConnectedComponentFromOneHotEncodingTransform)


def _on_input_device(operator: Callable) -> Callable:
    """nnU-Net builds the structuring element on the CPU; moving it lets the operator run where the image is."""
    def run(image: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        return operator(image, structure.to(image.device))
    return run


def _on_cpu_when_applied(apply_to_image: Callable) -> Callable:
    """nnU-Net's component removal is numpy code: move a sample to the CPU and back only when it removes something
    (p = 0.2, then p = 0.5 per label), not for every sample of every batch."""
    def run(image: torch.Tensor, **params: object) -> torch.Tensor:
        if not params["apply_to_channels"]:
            return image
        return apply_to_image(image.cpu(), **params).to(image.device)
    return run


class PreviousStageCorruption:
    """nnU-Net's random corruptions of the previous stage's one-hot channels, taken from its training pipeline
    (transforms, order, probabilities), applied to one sample at a time with draws that depend only on a seed."""

    def __init__(self, patch_size: Sequence[int], foreground_labels: Sequence[int]) -> None:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

        pipeline = nnUNetTrainer.get_training_transforms(tuple(patch_size), (0.0, 0.0), None, None, False,
                                                         is_cascaded=True, foreground_labels=list(foreground_labels))
        found = [t for t in pipeline.transforms
                 if isinstance(t, RandomTransform) and isinstance(t.transform, CORRUPTIONS)]
        if [type(t.transform) for t in found] != list(CORRUPTIONS):
            raise RuntimeError(f"nnU-Net's cascade transforms are not the expected "
                               f"{[c.__name__ for c in CORRUPTIONS]} (found "
                               f"{[type(t.transform).__name__ for t in found]}): this nnunetv2 version is not "
                               f"supported for cascades; install nnunetv2 >= 2.8, < 2.9.")
        binary, removal = found[0].transform, found[1].transform
        binary.any_of_these = tuple(_on_input_device(o) for o in binary.any_of_these)
        removal._apply_to_image = _on_cpu_when_applied(removal._apply_to_image)
        self.transforms = found
        self.channel_orders = [list(t.transform.channel_idx) for t in found]

    def __call__(self, onehot: torch.Tensor, seed: int) -> torch.Tensor:
        """(L, *spatial) one-hot channels of one sample -> corrupted, on their device (the morphological operators
        run there; nnU-Net's connected-component removal runs on the CPU)."""
        for transform, order in zip(self.transforms, self.channel_orders):
            transform.transform.channel_idx = list(order)  # nnU-Net shuffles it in place: reset it per sample
        binary_operator, component_removal = self.transforms
        with seeded_global_rngs(seed):
            return component_removal(image=binary_operator(image=onehot)["image"])["image"]


@contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed torch's CPU and numpy's global generators (nnU-Net's transforms draw from them), restoring both after."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(state)


def cascade_inputs(data: torch.Tensor, seg: torch.Tensor, foreground_labels: Sequence[int],
                   corruption: PreviousStageCorruption, seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *) image and (B, 2, *) labels (target, previous stage; no padding label left) -> the (B, C + L, *) image
    with the previous stage as L one-hot channels, corrupted per sample with ``seeds[i]``, and the (B, 1, *) target.

    A sample's corruption depends only on its seed, so a resumed training draws what an uninterrupted one draws.
    """
    if seg.shape[1] != 2:
        raise ValueError(f"a cascade batch needs the previous stage as its second label channel, got seg "
                         f"{tuple(seg.shape)}")
    onehot = torch.stack([seg[:, 1] == label for label in foreground_labels], 1).to(data.dtype)
    corrupted = [corruption(onehot[i], int(seed)).to(data.device) for i, seed in enumerate(seeds.tolist())]
    return torch.cat([data, torch.stack(corrupted)], 1), seg[:, :1]
