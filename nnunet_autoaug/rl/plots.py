"""Picture of a strategy search: reward per evaluation (top) and the searcher's mean strategy over time (bottom)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nnunet_autoaug.plots import matplotlib_defaults


@matplotlib_defaults
def plot_search(rewards: Sequence[float | None], means: Sequence[Sequence[float]], dimensions: list[str], path: str,
                x_label: str = "trial (completion order)", title: str = "RL strategy search",
                best_so_far: bool = True) -> None:
    r = np.array([np.nan if v is None else v for v in rewards], dtype=float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [1, 1.4]})
    x = np.arange(1, len(r) + 1)
    top.plot(x, r, "o", ms=4, label="reward")
    if best_so_far and np.isfinite(r).any():
        top.plot(x, np.fmax.accumulate(np.where(np.isfinite(r), r, -np.inf)), "-", lw=1.2, label="best so far")
    failed = ~np.isfinite(r)
    if failed.any():
        top.plot(x[failed], np.full(failed.sum(), np.nanmin(r) if np.isfinite(r).any() else 0), "x", color="red",
                 label="failed")
    top.set_ylabel("reward")
    top.legend(fontsize=8)
    m = np.array(means, dtype=float).reshape(len(means), len(dimensions)) if len(means) else \
        np.zeros((0, len(dimensions)))
    if len(m):
        image = bottom.imshow(m.T, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis",
                              interpolation="nearest", extent=(0.5, len(m) + 0.5, -0.5, len(dimensions) - 0.5))
        fig.colorbar(image, ax=bottom, label="mean (unit scale; lr log-mapped)")
    bottom.set_yticks(range(len(dimensions)))
    bottom.set_yticklabels(dimensions, fontsize=7)
    bottom.set_xlabel(x_label)
    bottom.set_title("searcher's mean strategy", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
