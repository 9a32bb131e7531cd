"""Ray Tune Searcher wrapping any strategy searcher (PPO controller, hill climbing, random search).

Tune calls ``on_trial_complete`` and then ``suggest`` for the freed slot, both in the driver's single thread, so the
controller needs no locks. ``save``/``restore`` carry the whole searcher (controller weights, optimizer, hidden
state, PPO buffer, baseline, RNG, in-flight proposals, history): Tune snapshots them with the experiment state and
``Tuner.restore`` re-applies them to the searcher it unpickles from ``tuner.pkl``. A snapshot is also written after
every completion to ``<log_dir>/searcher_history.json`` (what the CSV and the plot are made from).
"""
from __future__ import annotations

import json
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ray.tune.search import Searcher as TuneSearcher

from nnunet_autoaug.atomic import write_text_atomically
from nnunet_autoaug.rl.searchers import make_searcher
from nnunet_autoaug.rl.strategy import DIMENSIONS, Strategy

STATE_VERSION = 1
HISTORY_FILE = "searcher_history.json"


class StrategySearcher(TuneSearcher):
    def __init__(self, searcher: str = "ppo", lr_mapping: str = "log", seed: int = 0,
                 start: Sequence[float] | None = None, log_dir: str | None = None, controller_lr: float = 0.01,
                 error_reward: float | None = None, metric: str = "dice", mode: str = "max"):
        super().__init__(metric=metric, mode=mode)
        self.searcher_name, self.lr_mapping = searcher, lr_mapping
        self.log_dir, self.error_reward = log_dir, error_reward
        self.inner = make_searcher(searcher, len(DIMENSIONS), start=start, seed=seed, controller_lr=controller_lr)
        self.generator = torch.Generator().manual_seed(seed)
        self.live: dict[str, dict] = {}  # trial_id -> proposal, until the trial completes
        self.history: list[dict] = []  # one entry per completed trial, in completion order
        self.n_restored = 0
        self.max_concurrent = 0  # 0: unlimited; Tune sets it from TuneConfig(max_concurrent_trials)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        # Limit concurrency here, not in Tune's ConcurrencyLimiter: the limiter's own set of live trials is not
        # part of the snapshot, so after Tuner.restore it would drop the completions of restored in-flight trials.
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self.live:
            if len(self.live) >= getattr(self, "max_concurrent", 0) > 0:
                return None  # all slots busy: Tune asks again when a trial completes
            self.live[trial_id] = self.inner.sample(1, self.generator)[0]
        return Strategy.from_unit(self.live[trial_id]["unit"], self.lr_mapping).to_config()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        proposal = self.live.pop(trial_id, None)
        if proposal is None:
            return
        dice = None if error or not result or self.metric not in result or result[self.metric] is None \
            else float(result[self.metric])
        if dice is not None and not math.isfinite(dice):
            dice = None
        status = "error" if dice is None else ("completed" if result.get("final") else "stopped")
        # ASHA-stopped trials report a truncated Dice: a valid (pessimistic) reward, the scheduler judged it worse
        reward = dice if dice is not None else self.error_reward
        updated = reward is not None and self.inner.update([proposal], [-reward])
        self.history.append({"trial_id": trial_id, "status": status, "reward": reward, "dice": dice,
                             "index": proposal.get("index"), "unit": list(proposal["unit"]),
                             "controller_updated": bool(updated), "mean_after": np.asarray(self.inner.best()).tolist()})
        self._write_history()

    def _write_history(self) -> None:
        if not self.log_dir:
            return
        text = json.dumps({"searcher": self.searcher_name, "lr_mapping": self.lr_mapping,
                           "dimensions": list(DIMENSIONS), "n_restored": self.n_restored,
                           "state": summary_of(self.inner.state_dict()),
                           "in_flight": sorted(self.live), "trials": self.history}, indent=1)
        write_text_atomically(Path(self.log_dir) / HISTORY_FILE, text)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"version": STATE_VERSION, "searcher": self.searcher_name, "inner": self.inner.state_dict(),
                         "generator": self.generator.get_state(), "live": self.live, "history": self.history,
                         "n_restored": self.n_restored}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state.get("version") != STATE_VERSION or state.get("searcher") != self.searcher_name:
            raise ValueError(f"{checkpoint_path}: searcher state version {state.get('version')} of "
                             f"{state.get('searcher')!r} cannot be restored into {self.searcher_name!r} "
                             f"(version {STATE_VERSION})")
        self.inner.load_state_dict(state["inner"])
        self.generator.set_state(state["generator"])
        self.live, self.history = state["live"], state["history"]
        self.n_restored = state["n_restored"] + 1
        self._write_history()


def summary_of(state: dict) -> dict:
    """The JSON-able counters of a searcher state (for people and tests)."""
    return {k: v for k, v in state.items() if isinstance(v, (int, float, str, bool)) or v is None}
