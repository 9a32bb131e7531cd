"""Pictures saved next to nnU-Net's progress.png, for people who look rather than read."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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
