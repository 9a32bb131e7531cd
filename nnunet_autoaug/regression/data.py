"""Whole preprocessed images at one fixed input size, and the "empty" image, in nnU-Net's normalised space.

The regressor sees whole images, not nnU-Net's random patches: a global label (a volume, a count) is a property of
the whole scan, and a patch would cut structures off and change the label. Every case is centre-padded to one
input size, the largest preprocessed shape of the dataset rounded up to the network's divisor, so global average
pooling always averages over the same number of voxels (a volume then maps to a fixed fraction of the image).
Images larger than that size (only possible for new images at predict time) are centre-cropped.

Background: after nnU-Net's normalisation 0 is *not* empty. For channels normalised inside the nonzero mask
(``use_mask_for_norm``) nnU-Net leaves the outside at exactly 0, so the background is 0. Otherwise (plain z-score,
CT) it is the image's minimum: each case is padded with its own per-channel minimum, and the empty image is filled
with the median of those minima over the training cases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def input_shape_for(shapes: list[tuple[int, ...]], divisor: int) -> tuple[int, ...]:
    """The smallest shape that holds every ``shapes`` entry and is divisible by ``divisor`` on every axis."""
    return tuple(int(math.ceil(max(s[a] for s in shapes) / divisor) * divisor) for a in range(len(shapes[0])))


def background_values(image: np.ndarray, use_mask_for_norm: list[bool] | None) -> np.ndarray:
    """(C,) background intensity of a normalised (C, *spatial) image."""
    mask_normalised = list(use_mask_for_norm or [False] * image.shape[0])
    return np.array([0.0 if mask_normalised[c] else float(image[c].min()) for c in range(image.shape[0])],
                    dtype=np.float32)


def fit_to_shape(image: np.ndarray, shape: tuple[int, ...], fill: np.ndarray) -> np.ndarray:
    """Centre-crop and/or centre-pad a (C, *spatial) image to (C, *shape); padding takes ``fill[c]``."""
    out = np.empty((image.shape[0], *shape), dtype=np.float32)
    out[:] = np.asarray(fill, dtype=np.float32).reshape(-1, *([1] * len(shape)))
    src, dst = [slice(None)], [slice(None)]
    for have, want in zip(image.shape[1:], shape):
        if have >= want:  # crop
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(None))
        else:  # pad
            start = (want - have) // 2
            src.append(slice(None))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = image[tuple(src)]
    return out


@dataclass
class CaseImages:
    """Fitted images of some cases, in ``keys`` order, with each case's background per channel."""

    keys: list[str]
    images: torch.Tensor  # (N, C, *shape), float32
    background: np.ndarray  # (N, C)

    def empty_image(self) -> torch.Tensor:
        """(C, *shape): every voxel at the median background of these cases."""
        fill = torch.from_numpy(np.median(self.background, axis=0).astype(np.float32))
        return fill.reshape(-1, *([1] * (self.images.ndim - 2))).expand(*self.images.shape[1:]).clone()


def case_shapes(dataset_class: type, folder: str, keys: list[str]) -> list[tuple[int, ...]]:
    dataset = dataset_class(folder, list(keys))
    return [tuple(int(s) for s in dataset.load_case(k)[0].shape[1:]) for k in keys]


def load_cases(dataset_class: type, folder: str, keys: list[str], shape: tuple[int, ...],
               use_mask_for_norm: list[bool] | None) -> CaseImages:
    """Read preprocessed cases with nnU-Net's dataset class (blosc2 or npz) and fit them to ``shape``."""
    dataset = dataset_class(folder, list(keys))
    images, background = [], []
    for k in keys:
        data = np.asarray(dataset.load_case(k)[0][:], dtype=np.float32)
        fill = background_values(data, use_mask_for_norm)
        images.append(fit_to_shape(data, shape, fill))
        background.append(fill)
    return CaseImages(list(keys), torch.from_numpy(np.stack(images)), np.stack(background))
