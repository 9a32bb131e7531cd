"""The small interface every policy searcher shares (MONAI HPOGen-style verbs)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch


class Searcher(ABC):
    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> list[Any]:
        """Draw n candidates from the current search distribution."""

    @abstractmethod
    def update(self, samples: Sequence[Any], losses: Sequence[float]) -> bool:
        """Move the distribution towards the candidates with lower loss; False when the update was skipped."""

    @abstractmethod
    def best(self) -> Any:
        """The most likely candidate."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue identically (plain arrays and numbers, no custom classes)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...
