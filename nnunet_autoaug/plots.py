"""Pictures saved next to nnU-Net's progress.png, for people who look rather than read."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

PlotFunction = TypeVar("PlotFunction", bound=Callable)


def matplotlib_defaults(plot: PlotFunction) -> PlotFunction:
    """Draw with matplotlib's default style. nnU-Net's logger calls ``seaborn.set(font_scale=2.5)`` for progress.png,
    which changes the global settings of the training process, so without this our small panels got giant labels."""
    @functools.wraps(plot)
    def drawn_with_defaults(*args, **kwargs):
        with plt.style.context("default"):
            return plot(*args, **kwargs)
    return drawn_with_defaults  # type: ignore[return-value]


def _middle_slice(volume: torch.Tensor, channel: int = 0) -> np.ndarray:
    """(C, *spatial) -> 2D slice of one channel (middle of axis 0 for 3D), as numpy (what matplotlib takes)."""
    image = volume[channel].detach().float().cpu()
    return (image[image.shape[0] // 2] if image.ndim == 3 else image).numpy()


MAX_EXAMPLE_CHANNELS = 4  # BraTS has 4 modalities; more rows would make the panels too small to judge


@matplotlib_defaults
def plot_augmentation_examples(raw: torch.Tensor, augmented: torch.Tensor, target: torch.Tensor, path: str,
                               max_samples: int = 4) -> None:
    """Per image channel, two rows: the loader's raw crops, and what the network is trained on with label contours.
    Channels are the raw image's (modalities, each with its own intensity draws), not a cascade's one-hot inputs."""
    n, channels = min(max_samples, raw.shape[0]), min(MAX_EXAMPLE_CHANNELS, raw.shape[1])
    fig, axes = plt.subplots(2 * channels, n, figsize=(3 * n, 6 * channels), squeeze=False)
    for c in range(channels):
        name = f", channel {c}" if raw.shape[1] > 1 else ""
        for i in range(n):
            top, bottom = axes[2 * c, i], axes[2 * c + 1, i]
            top.imshow(_middle_slice(raw[i], c), cmap="gray")
            top.set_title(f"crop {i}{name}", fontsize=9)
            bottom.imshow(_middle_slice(augmented[i], c), cmap="gray")
            labels = _middle_slice(target[i])
            if labels.max() > 0:
                # iso-lines between label values: contouring exactly at a plateau's value draws nothing
                levels = [v - 0.5 for v in sorted(set(np.unique(labels).tolist()) - {0})]
                bottom.contour(labels, levels=levels, linewidths=0.8, cmap="autumn")
            bottom.set_title(f"augmented {i}{name}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("nnunet_autoaug: training samples before/after augmentation (middle slice)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@matplotlib_defaults
def plot_theta_history(history: np.ndarray, names: list[str], path: str, bound: float | None = None) -> None:
    """One heatmap per searched variable: probability of each level (rows) over epochs (columns)."""
    history = np.asarray(history)  # (epochs, variables, levels)
    cols = 6
    rows = int(np.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows + 0.6), squeeze=False)
    vmax = max(0.25, float(history.max()))  # early theta is ~1/11: a fixed 0-1 scale would show nothing
    epochs = history.shape[0]
    for ax, (i, name) in zip(axes.flat, enumerate(names)):
        ax.imshow(history[:, i, :].T, aspect="auto", origin="lower", vmin=0, vmax=vmax, cmap="viridis",
                  interpolation="nearest", extent=(0.5, epochs + 0.5, -0.5, history.shape[2] - 0.5))
        ax.grid(False)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("level", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    converge = history.max(axis=2).mean(axis=1)[-1]
    title = f"ASNG theta per variable (bright = likely level); mean max theta {converge:.3f}"
    fig.suptitle(title + (f" of at most {bound:.3f}" if bound else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@matplotlib_defaults
def plot_stacked_probabilities(history: np.ndarray, names: list[str], path: str,
                               group_names: list[str] | None = None, title: str = "", first_epoch: int = 1) -> None:
    """Stacked areas: probability of each op (summed over its magnitudes) per epoch, one panel per policy group.

    ``history``: (epochs, ops) or (epochs, groups, ops); every row sums to 1. Row i is epoch ``first_epoch + i``
    (0: the start).
    """
    history = np.asarray(history, dtype=float)
    if history.ndim == 2:
        history = history[:, None, :]
    epochs, groups, ops = history.shape
    group_names = group_names or [""] * groups
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(ops, 2)))
    fig, axes = plt.subplots(1, groups, figsize=(6.5 * groups + 2.2, 4), squeeze=False)
    x = np.arange(first_epoch, first_epoch + epochs, dtype=float)
    if epochs == 1:  # one epoch has no extent: draw it as a band of width 1 around it
        x, history = np.array([first_epoch - 0.5, first_epoch + 0.5]), np.repeat(history, 2, axis=0)
    for ax, g in zip(axes[0], range(groups)):
        ax.stackplot(x, history[:, g].T, colors=colours)
        ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch (0: start)" if first_epoch == 0 else "epoch")
        ax.set_ylabel("probability")
        if epochs == 1:
            ax.set_xticks([first_epoch])
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(group_names[g], fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours[:ops]]
    axes[0, -1].legend(handles[::-1], names[::-1], loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.suptitle(title or "learned augmentation distribution per op (magnitudes summed)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
