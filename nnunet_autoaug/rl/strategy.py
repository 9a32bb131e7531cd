"""A training strategy (Yang et al. 2019): probabilities of the RL space's augmentation ops plus the learning rate.

The searchers work on unit vectors in [0, 1]^m, one entry per row of ``DIMENSIONS``: the op probabilities as they
are, and the learning rate mapped from [1e-4, 1e-2]. The paper maps it linearly; the default here is log-uniform,
lr = 10^(-4 + 2a) (a declared deviation: with the linear map 91 % of the draws land above 1e-3, so the small learning
rates that fine-tuning wants are hardly ever tried). ``--lr-mapping linear`` restores the paper's map. Strategy files
are JSON and load with friendly errors.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.policy import PRESETS, Policy, PolicyError
from nnunet_autoaug.policy.policy import FORMAT as POLICY_FORMAT
from nnunet_autoaug.policy.policy import check_file_header, file_in_folder
from nnunet_autoaug.policy.rl_space import OPS
from nnunet_autoaug.settings import STRATEGY_VAR  # noqa: F401 - part of this module's interface (rl.STRATEGY_VAR)

FORMAT, VERSION = "nnunet_autoaug.strategy", 1
LR_RANGE = (1e-4, 1e-2)
DIMENSIONS: tuple[str, ...] = (*OPS, "lr")  # the strategy table: 13 op probabilities, then the learning rate
LR_MAPPINGS = ("log", "linear")
_TOP_LEVEL = {"format", "version", "policy", "learning_rate", "readable", "comment"}


class StrategyError(PolicyError):
    """A malformed strategy file or value."""


def lr_from_unit(a: float, mapping: str = "log") -> float:
    lo, hi = LR_RANGE
    a = min(max(float(a), 0.0), 1.0)
    if mapping == "log":
        return float(10 ** (math.log10(lo) + a * (math.log10(hi) - math.log10(lo))))
    if mapping == "linear":
        return float(lo + a * (hi - lo))
    raise StrategyError(f"unknown learning-rate mapping {mapping!r}; use one of {LR_MAPPINGS}.")


def lr_to_unit(lr: float, mapping: str = "log") -> float:
    lo, hi = LR_RANGE
    if mapping == "log":
        return (math.log10(lr) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    if mapping == "linear":
        return (lr - lo) / (hi - lo)
    raise StrategyError(f"unknown learning-rate mapping {mapping!r}; use one of {LR_MAPPINGS}.")


@dataclass(frozen=True)
class Strategy:
    """An RL-space policy (op probabilities) and the initial learning rate of nnU-Net's poly schedule."""

    policy: Policy
    learning_rate: float

    def __post_init__(self) -> None:
        if self.policy.space != "rl":
            raise StrategyError(f"a strategy's policy must be of space 'rl', got {self.policy.space!r}.")
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) \
                or not LR_RANGE[0] * (1 - 1e-9) <= lr <= LR_RANGE[1] * (1 + 1e-9):
            raise StrategyError(f"learning_rate must be a number in [{LR_RANGE[0]:g}, {LR_RANGE[1]:g}], got {lr!r}.")
        object.__setattr__(self, "learning_rate", float(lr))

    # ------------------------------------------------------------------------------------- unit-vector form
    def to_unit(self, mapping: str = "log") -> np.ndarray:
        return np.array([self.policy[op] for op in OPS] + [lr_to_unit(self.learning_rate, mapping)])

    @classmethod
    def from_unit(cls, unit: Sequence[float], mapping: str = "log") -> Strategy:
        unit = np.clip(np.asarray(unit, dtype=float), 0.0, 1.0)
        if unit.shape != (len(DIMENSIONS),):
            raise StrategyError(f"a strategy vector has {len(DIMENSIONS)} entries {DIMENSIONS}, got {unit.shape}.")
        return cls(Policy.create("rl", dict(zip(OPS, unit[:-1].tolist()))), lr_from_unit(unit[-1], mapping))

    def to_config(self) -> dict[str, float]:
        """Flat dict (one key per dimension, lr in real units): a Ray Tune trial config and a CSV row."""
        return {**self.policy.as_dict(), "lr": self.learning_rate}

    @classmethod
    def from_config(cls, config: dict) -> Strategy:
        missing = [d for d in DIMENSIONS if d not in config]
        if missing:
            raise StrategyError(f"strategy config misses {missing}.")
        return cls(Policy.create("rl", {op: config[op] for op in OPS}, "strategy config"), float(config["lr"]))

    # ------------------------------------------------------------------------------------------------ JSON
    def summary(self) -> str:
        return f"lr {self.learning_rate:.2e} | {self.policy.search_space.summary(self.policy)}"

    def to_json_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "learning_rate": self.learning_rate,
                "policy": self.policy.to_json_dict(), "readable": self.summary()}

    def dumps(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        write_text_atomically(path, self.dumps() + "\n")

    @classmethod
    def from_json_dict(cls, d: object, source: str = "strategy") -> Strategy:
        if isinstance(d, dict) and d.get("format") == POLICY_FORMAT:
            raise StrategyError(f"{source} is a policy file, not a strategy file. Train it with nnUNetTrainerPolicy "
                                f"(nnUNet_autoaug_policy), or wrap it: {{\"policy\": <that file>, "
                                f"\"learning_rate\": 0.01}}.")
        check_file_header(d, source, "strategy", FORMAT, VERSION, _TOP_LEVEL, ("policy", "learning_rate"),
                          StrategyError)
        try:
            return cls(Policy.from_json_dict(d["policy"], f"{source}: field 'policy'", expected_space="rl"),
                       d["learning_rate"])
        except StrategyError as e:
            raise StrategyError(f"{source}: {e}") from None
        except PolicyError as e:
            raise StrategyError(str(e)) from None

    @classmethod
    def loads(cls, text: str, source: str = "strategy") -> Strategy:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise StrategyError(f"{source}: not valid JSON ({e}).") from None
        return cls.from_json_dict(d, source)

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """A strategy JSON file, or a folder holding one: the search's output folder (its best strategy) or an RL
        trainer's results folder (the controller's mean strategy)."""
        path = file_in_folder(path, (BEST_STRATEGY_FILE, STRATEGY_FILE), "strategy", StrategyError,
                              f"e.g. {BEST_STRATEGY_FILE} of nnUNetv2_autoaug_search_rl, or the folder it is in")
        return cls.loads(path.read_text(), str(path))


BEST_STRATEGY_FILE = "best_strategy.json"  # nnUNetv2_autoaug_search_rl's best completed trial, in its -o folder
STRATEGY_FILE = "autoaug_strategy.json"  # what a strategy trainer trains with / nnUNetTrainerRL's final mean strategy

# nnU-Net's own default augmentation (preset nnunet_default) and its initial learning rate 1e-2
DEFAULT_STRATEGY = Strategy(PRESETS["nnunet_default"], 1e-2)

RL_EVERY_VAR = "nnUNet_autoaug_rl_every"  # nnUNetTrainerRL: epochs per proposed strategy (default 5)
