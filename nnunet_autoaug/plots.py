"""Pictures saved next to nnU-Net's progress.png, for people who look rather than read."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _middle_slice(volume: torch.Tensor) -> torch.Tensor:
    """(C, *spatial) -> 2D slice of channel 0 (middle of axis 0 for 3D)."""
    image = volume[0].detach().float().cpu()
    return image[image.shape[0] // 2] if image.ndim == 3 else image


def plot_augmentation_examples(raw: torch.Tensor, augmented: torch.Tensor, target: torch.Tensor, path: str,
                               max_samples: int = 4) -> None:
    """Top row: the loader's raw crops; bottom row: what the network is trained on, with label contours."""
    n = min(max_samples, raw.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(3 * n, 6), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(_middle_slice(raw[i]), cmap="gray")
        axes[0, i].set_title(f"crop {i}", fontsize=9)
        axes[1, i].imshow(_middle_slice(augmented[i]), cmap="gray")
        labels = _middle_slice(target[i])
        if labels.max() > 0:
            # iso-lines between label values: contouring exactly at a plateau's value draws nothing
            levels = [v - 0.5 for v in sorted(set(labels.unique().tolist()) - {0})]
            axes[1, i].contour(labels.numpy(), levels=levels, linewidths=0.8, cmap="autumn")
        axes[1, i].set_title(f"augmented {i}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("nnunet_autoaug: training samples before/after augmentation (middle slice)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


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
