"""A consistent copy of Tune's experiment state, kept by the driver itself so that ``--resume`` never sees a torn one.

Tune writes its experiment state (the trial list, the search algorithm's counters, our searcher's pickle) to a local
staging folder and copies that folder to ``-o/ray`` in a background thread. A driver killed before or during such a
copy leaves ``-o/ray`` with a stale or partial set. Seen once in CI: the trial list without the search algorithm's
files; ``Tuner.restore`` then restored the trials, skipped the searcher without a word and, as it takes the number of
samples from the missing file, started no new trial (Tune's silent path of ray-project/ray#30861, there for a searcher
of the wrong type). So after every step whose trials or search state changed, the driver also stores the staging set
in one file in ``-o`` (atomic replace), and ``--resume`` puts that set back into ``-o/ray`` before Tune reads it.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import time
from pathlib import Path

from ray.tune import Callback

from nnunet_autoaug.atomic import write_bytes_atomically

SNAPSHOT_FILE = "tune_state_snapshot.pkl"
SNAPSHOT_VERSION = 1
EXPERIMENT_STATE_PREFIX = "experiment_state-"
TUNER_FILE = "tuner.pkl"  # written once by Tuner() straight to -o/ray, never part of the staging set


def is_state_file(path: Path) -> bool:
    """What Tune's restore reads from the experiment folder (``*.json``, ``*.pkl``), without temporaries."""
    return (path.is_file() and path.suffix in (".json", ".pkl") and not path.name.startswith((".", "tmp-"))
            and path.name != TUNER_FILE)


def _signature(trials: list, files: dict[str, bytes | None]) -> str:
    """Changes with what a restore acts on: per trial its id, status, last result and failures (read from the trials
    Tune has just saved; the saved file also holds times that change every step), the state files' names, and the
    search generator's counters (the small ``*.json`` beside it). Pickles (``None`` here) are left out: tensors pickle
    to new bytes on every save, and our searcher's state changes only with a trial (a suggestion adds one, a
    completion ends one)."""
    keys = [[t.trial_id, t.status, t.run_metadata.last_result_time, t.run_metadata.num_failures] for t in trials]
    digest = hashlib.sha256(json.dumps(keys).encode())
    for name in sorted(files):
        digest.update(b"\0" + name.encode() + b"\0" + (files[name] or b""))
    return digest.hexdigest()


class TuneStateSnapshot(Callback):
    """Stores Tune's staging state set in ``<output>/tune_state_snapshot.pkl`` after each step that changed it.

    Cheap per step: Tune calls ``get_state`` as the last part of each save of its state, so a step without that call
    left the staging folder as it was; after a save only the trial list in memory and the small search generator file
    are compared, and the whole set (megabytes with a hundred trials) is read only when they changed.
    """

    def __init__(self, output: str):
        self.output = output
        self._signature: str | None = None
        self._tune_saved = False
        self._iteration = 0

    def get_state(self) -> None:
        self._tune_saved = True  # called by Tune right after it wrote the experiment and searcher state
        return None  # nothing of ours to store: no callback state file

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        self._iteration = iteration
        if not (trials and self._tune_saved):
            return
        self._tune_saved = False
        staging = Path(trials[0].storage.experiment_driver_staging_path)
        try:
            paths = [p for p in staging.iterdir() if is_state_file(p)]
            small = {p.name: None if p.suffix == ".pkl" or p.name.startswith(EXPERIMENT_STATE_PREFIX)
                     else p.read_bytes() for p in paths}
        except OSError:
            return  # a file went away while we looked: keep the previous snapshot
        signature = _signature(trials, small)
        if signature == self._signature or not any(n.startswith(EXPERIMENT_STATE_PREFIX) for n in small):
            return
        try:
            files = {p.name: p.read_bytes() for p in paths}
        except OSError:
            return
        write_bytes_atomically(Path(self.output) / SNAPSHOT_FILE, pickle.dumps(
            {"version": SNAPSHOT_VERSION, "iteration": iteration, "time": time.time(), "files": files}))
        self._signature = signature

    def on_experiment_end(self, trials: list, **info) -> None:
        # Tune's final save (forced when the search ends or is stopped with Ctrl-C) is followed by no step end; with
        # TUNE_GLOBAL_CHECKPOINT_S > 0 it can hold changes that no periodic save had
        self.on_step_end(self._iteration, trials)


def put_back(output: Path, experiment_dir: Path) -> str | None:
    """Replace Tune's state set in ``experiment_dir`` by the driver's last snapshot; returns what it did (or None)."""
    path = Path(output) / SNAPSHOT_FILE
    if not path.is_file() or not experiment_dir.is_dir():
        return None
    snapshot = pickle.loads(path.read_bytes())
    if snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"{path}: snapshot version {snapshot.get('version')} is not {SNAPSHOT_VERSION}; "
                         f"delete the file to resume from Tune's own (possibly stale) state in {experiment_dir}")
    for stale in experiment_dir.iterdir():
        if is_state_file(stale) and stale.name not in snapshot["files"]:
            stale.unlink()
    for name, data in snapshot["files"].items():
        write_bytes_atomically(experiment_dir / name, data)
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot["time"]))
    return (f"resuming from the driver's snapshot of Tune's state (step {snapshot['iteration']}, {saved}): "
            f"{', '.join(sorted(snapshot['files']))}")
