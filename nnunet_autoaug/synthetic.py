"""A tiny synthetic dataset in nnU-Net raw format, so tests and the demo need no download.

Each case is a noisy volume holding an ellipsoid (label 1) with a smaller sphere (label 2) next to it, at random
positions, sizes and intensities, so a network has to learn shape and contrast, not a fixed location.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DEFAULT_ID = 990
DEFAULT_NAME = "AutoAugSynth"


def _case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    size = np.asarray(shape, dtype=np.float32)
    centre = rng.uniform(0.35, 0.65, 3) * size
    radii = rng.uniform(0.15, 0.25, 3) * size
    ellipsoid = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    offset = rng.normal(size=3)
    offset *= (radii + 0.1 * size) / np.linalg.norm(offset)
    sphere_centre, sphere_radius = centre + offset, rng.uniform(0.08, 0.12) * size.min()
    sphere = ((grid - sphere_centre[:, None, None, None]) ** 2).sum(0) <= sphere_radius ** 2
    label = np.zeros(shape, dtype=np.uint8)
    label[ellipsoid] = 1
    label[sphere] = 2
    image = rng.normal(100, 15, shape).astype(np.float32)
    image[ellipsoid] += rng.uniform(50, 80)
    image[sphere] += rng.uniform(110, 150)
    return image, label


def _write(array: np.ndarray, path: Path) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path))


def make_synthetic_dataset(raw_root: str | Path, dataset_id: int = DEFAULT_ID, num_train: int = 12,
                           num_test: int = 2, shape: tuple[int, int, int] = (32, 32, 32), seed: int = 0,
                           channels: int = 1) -> Path:
    """Write ``Dataset<id>_AutoAugSynth`` under ``raw_root`` (an nnUNet_raw folder) and return its path.

    ``channels`` > 1 adds modalities (as in BraTS): channel k > 0 shows the same anatomy with inverted contrast, its
    own scale and its own noise."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{DEFAULT_NAME}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(num_train + num_test):
        image, label = _case(rng, shape)
        split = "Tr" if i < num_train else "Ts"
        _write(image, folder / f"images{split}" / f"synth_{i:03d}_0000.nii.gz")
        for k in range(1, channels):
            other = (400.0 - image) * rng.uniform(0.5, 2.0) + rng.normal(0, 10, shape)
            _write(other.astype(np.float32), folder / f"images{split}" / f"synth_{i:03d}_{k:04d}.nii.gz")
        _write(label, folder / f"labels{split}" / f"synth_{i:03d}.nii.gz")
    dataset_json = {"channel_names": {str(k): f"MRI{k}" if k else "MRI" for k in range(channels)},
                    "labels": {"background": 0, "ellipsoid": 1, "sphere": 2}, "numTraining": num_train,
                    "file_ending": ".nii.gz", "name": DEFAULT_NAME,
                    "description": "nnunet_autoaug synthetic test data (generated)"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder
