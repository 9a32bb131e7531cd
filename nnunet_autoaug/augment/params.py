"""Per-sample augmentation parameters: the contract between samplers and the engine.

Samplers (``nnunet_autoaug.policy``) draw these from a policy with an explicit ``torch.Generator``; the engine
(``nnunet_autoaug.augment.engine``) applies them to a batch, deterministically. Every field holds one row per
sample, and every op has an *identity value* that means "not applied", so a sample that skips an op simply keeps
the identity there. An intensity field may instead hold one value per image channel, shape (n, C), for the ops that
nnU-Net draws per channel on multi-channel images. Keeping the parameters as plain tensors (no op objects) makes
them cheap to move, log, replay and test.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

# Field name -> (identity value, trailing shape). Trailing shape (3,) means one value per spatial axis (2D data
# uses the first two). Order is the order in which the engine applies intensity ops (spatial ops run in one pass).
FIELD_SPECS: dict[str, tuple[float, tuple[int, ...]]] = {
    # spatial: one resampling pass for all of them
    "scale": (1.0, (3,)),  # >1 samples a larger input region (zoom out, objects shrink), as nnU-Net / bg v1
    "rotation": (0.0, (3,)),  # radians about axis 0, 1, 2; 2D data uses the angle about axis 0 (in-plane)
    "elastic_alpha": (0.0, ()),  # displacement scale in voxels (seed paper / batchgenerators v1 semantics)
    "elastic_sigma": (0.0, ()),  # Gaussian smoothing of the noise field, voxels (clamped from below by the engine)
    "mirror": (0.0, (3,)),  # 1.0 = flip that axis
    # intensity, applied in this order (nnU-Net's order where nnU-Net has the op)
    "noise_std": (0.0, ()),
    "blur_sigma": (0.0, ()),
    "sharpen": (0.0, ()),  # unsharp-mask strength
    "brightness": (1.0, ()),  # multiplicative
    "shift": (0.0, ()),  # additive, in units of the (normalised) intensity
    "contrast": (1.0, ()),
    "lowres": (1.0, ()),  # zoom factor of the simulated low resolution, in (0, 1]
    "inv_gamma": (1.0, ()),  # gamma applied to the inverted image
    "gamma": (1.0, ()),
}
SPATIAL_FIELDS = ("scale", "rotation", "elastic_alpha", "elastic_sigma", "mirror")
INTENSITY_FIELDS = tuple(f for f in FIELD_SPECS if f not in SPATIAL_FIELDS)


@dataclass(frozen=True)
class AugmentParams:
    """Batch of per-sample parameters; all tensors live on the CPU, batch first, float32.

    ``seed`` (int64, one per sample) seeds the engine's per-sample generators for the random fields that are
    too large to draw up front (elastic noise, Gaussian noise): the draw is then reproducible and independent
    per sample, on any device.
    """

    scale: torch.Tensor
    rotation: torch.Tensor
    elastic_alpha: torch.Tensor
    elastic_sigma: torch.Tensor
    mirror: torch.Tensor
    noise_std: torch.Tensor
    blur_sigma: torch.Tensor
    sharpen: torch.Tensor
    brightness: torch.Tensor
    shift: torch.Tensor
    contrast: torch.Tensor
    lowres: torch.Tensor
    inv_gamma: torch.Tensor
    gamma: torch.Tensor
    seed: torch.Tensor

    def __post_init__(self) -> None:
        n = self.seed.shape[0]
        for name, (_, trailing) in FIELD_SPECS.items():
            shape = tuple(getattr(self, name).shape)
            per_channel = name in INTENSITY_FIELDS and len(shape) == 2 and shape[0] == n and shape[1] >= 1
            if shape != (n, *trailing) and not per_channel:
                expected = f"(n, C) or {(n, *trailing)}" if name in INTENSITY_FIELDS else str((n, *trailing))
                raise ValueError(f"AugmentParams.{name} has shape {shape}, expected {expected}")

    @property
    def batch_size(self) -> int:
        return int(self.seed.shape[0])

    @classmethod
    def identity(cls, batch_size: int, generator: torch.Generator | None = None) -> "AugmentParams":
        """Parameters that leave a batch unchanged (apart from the centre crop)."""
        values = {name: torch.full((batch_size, *trailing), ident, dtype=torch.float32)
                  for name, (ident, trailing) in FIELD_SPECS.items()}
        seed = torch.randint(0, 2 ** 62, (batch_size,), generator=generator, dtype=torch.int64)
        return cls(**values, seed=seed)

    def with_values(self, **changes: torch.Tensor) -> "AugmentParams":
        return replace(self, **changes)

    def is_identity(self, name: str) -> torch.Tensor:
        """Bool per sample: True where op ``name`` is not applied (to any axis or channel)."""
        same = getattr(self, name) == FIELD_SPECS[name][0]
        return same.all(dim=1) if same.ndim > 1 else same

    def select(self, index: torch.Tensor) -> "AugmentParams":
        """The parameters of a subset of samples (index: long tensor or bool mask)."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list["AugmentParams"]) -> "AugmentParams":
        return AugmentParams(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(AugmentParams)})

    def to_dict(self) -> dict[str, list]:
        """JSON-friendly view, e.g. for logs and for replaying exactly the parameters that were applied."""
        return {f.name: getattr(self, f.name).tolist() for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> "AugmentParams":
        return cls(**{name: torch.tensor(d[name], dtype=torch.int64 if name == "seed" else torch.float32)
                      for name in [f.name for f in fields(cls)]})
