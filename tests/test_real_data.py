"""The engine on real MSD Hippocampus cases (skipped when ../shared/data/Task04_Hippocampus is absent)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_autoaug.augment import augment_batch
from nnunet_autoaug.augment.targets import remove_padding_label
from nnunet_autoaug.policy import SPACES, make_generator, required_input_size

TASK = Path(os.environ.get("nnUNet_autoaug_task04", Path(__file__).resolve().parents[2] / "shared" / "data" /
                           "Task04_Hippocampus"))
pytestmark = pytest.mark.skipif(not (TASK / "labelsTr").is_dir(), reason=f"real data not found at {TASK}")


def load_cases(n: int, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """n cases, z-scored and centre-padded (image 0, label -1 outside, as nnU-Net's loader pads) to ``size``."""
    images, labels = [], []
    for path in sorted((TASK / "labelsTr").glob("hippocampus_*.nii.gz"))[:n]:
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.int16)
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(TASK / "imagesTr" / path.name))).astype(np.float32)
        image = (image - image.mean()) / image.std()
        img, lab = np.zeros(size, np.float32), np.full(size, -1, np.int16)
        lo = [(s - d) // 2 for s, d in zip(size, image.shape)]
        region = tuple(slice(a, a + d) for a, d in zip(lo, image.shape))
        img[region], lab[region] = image, label
        images.append(img)
        labels.append(lab)
    return torch.from_numpy(np.stack(images))[:, None], torch.from_numpy(np.stack(labels))[:, None]


@pytest.mark.parametrize("space", sorted(SPACES))
def test_real_cases_keep_valid_labels_and_foreground(space: str) -> None:
    patch = (40, 56, 40)  # nnU-Net's 3d_fullres patch for this dataset
    s = SPACES[space]
    data, seg = load_cases(6, required_input_size(patch, s.extent(None)))
    g = make_generator(0)
    params = s.sample([s.random_policy(g) for _ in range(6)], g)
    out, out_seg = augment_batch(data, seg, params, patch)
    out_seg = remove_padding_label(out_seg)
    assert out.shape == (6, 1, *patch) and torch.isfinite(out).all()
    assert set(out_seg.unique().tolist()) <= {0, 1, 2}
    assert ((out_seg == 1).flatten(1).any(1) | (out_seg == 2).flatten(1).any(1)).float().mean() >= 0.5
