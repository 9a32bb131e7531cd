"""What every search space provides: validation of policy values, per-sample sampling, and its spatial extent."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from nnunet_autoaug.augment.params import AugmentParams

if TYPE_CHECKING:
    from nnunet_autoaug.policy.policy import Policy


class PolicyError(ValueError):
    """A policy file or value that does not fit its search space. The message names the field and the fix."""


@dataclass(frozen=True)
class SamplingContext:
    """What a sampler needs to know about the nnU-Net configuration it augments for.

    ``nnunet_rotation`` is nnU-Net's own rotation range for the configuration (radians): +-30 deg in 3D, +-180 deg
    in 2D and dummy-2D (+-15 deg for elongated 2D patches). Spaces that copy nnU-Net's magnitudes use it.
    ``channels`` is the number of image channels (modalities): with more than one, spaces draw the intensity ops
    that nnU-Net draws per channel once per channel.
    """

    ndim: int = 3
    dummy_2d: bool = False
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    nnunet_rotation: float = math.radians(30)
    channels: int = 1

    @property
    def in_plane_only(self) -> bool:
        return self.ndim == 2 or self.dummy_2d


@dataclass(frozen=True)
class Extent:
    """Largest spatial change a policy (or a whole space) can make: sizes the crop the data loader takes."""

    max_rotation: tuple[float, float, float]  # radians about axis 0, 1, 2
    max_scale: float
    mirrors: bool = True  # False: never flips, so test-time mirroring should be off too


class SearchSpace(ABC):
    """A small declarative table of ops plus the rules to sample per-sample parameters from a policy over it."""

    name: str
    description: str

    @property
    @abstractmethod
    def variables(self) -> tuple[str, ...]:
        """The names of the policy's values, in a fixed order (the searchers' coordinate order)."""

    @abstractmethod
    def check_value(self, variable: str, value: object) -> float:
        """Return the value as a number, or raise PolicyError naming the variable and the allowed range."""

    def check_values(self, values: dict[str, object], source: str = "policy") -> tuple[tuple[str, float], ...]:
        unknown = sorted(set(values) - set(self.variables))
        if unknown:
            raise PolicyError(f"{source}: unknown field(s) {unknown} for space '{self.name}'. "
                              f"Valid fields: {list(self.variables)}.")
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise PolicyError(f"{source}: missing field(s) {missing} for space '{self.name}'.")
        try:
            checked = tuple((v, self.check_value(v, values[v])) for v in self.variables)
        except PolicyError as e:
            raise PolicyError(f"{source}: {e}") from None
        self.check_joint(dict(checked), source)
        return checked

    def check_joint(self, values: dict[str, float], source: str) -> None:
        """Constraints across variables (e.g. probabilities summing to one)."""

    @abstractmethod
    def sample(self, policies: Sequence["Policy"], generator: torch.Generator,
               context: SamplingContext = SamplingContext()) -> AugmentParams:
        """Per-sample parameters, one row per policy (one policy per sample)."""

    @abstractmethod
    def extent(self, policy: "Policy | None", context: SamplingContext = SamplingContext()) -> Extent:
        """Largest rotation and scale of ``policy``, or of anything in the space when ``policy`` is None."""

    @abstractmethod
    def random_policy(self, generator: torch.Generator) -> "Policy":
        """A policy drawn uniformly from the space (RandAugment-style baseline)."""

    @abstractmethod
    def readable(self, policy: "Policy") -> dict[str, object]:
        """Human-readable decoding (magnitudes in real units) for logs and JSON files."""

    def summary(self, policy: "Policy") -> str:
        """One compact line for the training log."""
        return " ".join(f"{k}={v}" for k, v in self.readable(policy).items())


def check_number(space: str, variable: str, value: object, lo: float, hi: float, integer: bool = False) -> float:
    kind = "an integer level" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and float(value) != int(value)):
        raise PolicyError(f"field '{variable}' of space '{space}' must be {kind} in [{lo:g}, {hi:g}], got {value!r}.")
    if not (lo <= float(value) <= hi) or math.isnan(float(value)):
        raise PolicyError(f"field '{variable}' of space '{space}' is {value!r}, outside the allowed range "
                          f"[{lo:g}, {hi:g}].")
    return float(value)
