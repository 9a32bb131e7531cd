"""The held-out search split: carved from the fold's *training* cases, never from its validation cases.

The fold's validation cases stay untouched for honest reporting; the seed paper's code leaked them into the policy
update (docs/ALGORITHMS.md). The split is deterministic, so a resumed run and every searcher see the same cases.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

SPLIT_SEED = 12345


def split_search_cases(train_keys: Sequence[str], fraction: float,
                       seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(remaining training keys, search keys). ``fraction`` of the cases (at least one) go to the search split."""
    if not 0 < fraction < 1:
        raise ValueError(f"search split fraction must be in (0, 1), got {fraction}")
    keys = sorted(train_keys)
    if len(keys) < 2:
        raise ValueError(f"a search split needs at least 2 training cases in the fold, got {len(keys)}: this "
                         f"trainer holds part of them out to rank its search. Use a split with more training "
                         f"cases, or a trainer without a search split (nnUNetTrainerRandAug, or nnUNetTrainerPolicy "
                         f"with a policy found on other data).")
    n_search = min(max(1, round(fraction * len(keys))), len(keys) - 1)
    order = np.random.RandomState(seed).permutation(len(keys))
    search = sorted(keys[i] for i in order[:n_search])
    return [k for k in keys if k not in set(search)], search
