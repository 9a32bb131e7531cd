"""Pictures of a search: the derived cells, and how the op probabilities moved."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from nnunet_autoaug.nas.genotype import CELL_TYPES, N_INPUTS, Genotype
from nnunet_autoaug.nas.ops import PRIMITIVES
from nnunet_autoaug.plots import matplotlib_defaults

_COLOURS = dict(zip(PRIMITIVES, plt.get_cmap("tab10")(np.arange(len(PRIMITIVES)))))


@matplotlib_defaults
def plot_genotype(genotype: Genotype, path: str) -> None:
    """One panel per cell type: inputs on the left, the 4 nodes, the concat output; edges labelled with their op."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    for ax, cell_type in zip(axes.flat, CELL_TYPES):
        nodes = genotype.cells[cell_type]
        pos = {0: (0.0, 0.8), 1: (0.0, 0.2)}
        pos.update({N_INPUTS + j: (0.3 + 0.19 * j, 0.85 if j % 2 else 0.15) for j in range(len(nodes))})
        out = (1.05, 0.5)
        for j, node in enumerate(nodes):
            for op, state in node:
                (x0, y0), (x1, y1) = pos[state], pos[N_INPUTS + j]
                ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=_COLOURS[op], lw=1.6,
                                                                    shrinkA=12, shrinkB=12,
                                                                    connectionstyle="arc3,rad=0.12"))
                # label near the target end: edges into one node fan out there, so labels do not overlap
                ax.text(x0 + 0.62 * (x1 - x0), y0 + 0.62 * (y1 - y0), op, fontsize=8, color=_COLOURS[op], ha="center",
                        bbox=dict(fc="white", ec="none", alpha=0.7, pad=0.5))
            ax.annotate("", out, pos[N_INPUTS + j], arrowprops=dict(arrowstyle="->", color="0.7", ls="--",
                                                                    shrinkA=12, shrinkB=12))
        labels = {0: "c_{k-2}", 1: "c_{k-1}", **{N_INPUTS + j: str(j) for j in range(len(nodes))}}
        for state, (x, y) in pos.items():
            ax.text(x, y, labels[state], ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="circle" if state >= N_INPUTS else "round", fc="lightsteelblue"))
        ax.text(*out, "concat", ha="center", va="center", fontsize=9, bbox=dict(boxstyle="round", fc="wheat"))
        ax.set_xlim(-0.1, 1.15)
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(cell_type.replace("_", "-") + (" (also the inter-cell)" if cell_type == "encoder_normal" else ""))
        ax.axis("off")
    fig.suptitle(f"SCNAS cells ({genotype.dim}D genotype, DARTS rule: 2 strongest non-zero inputs per node)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


@matplotlib_defaults
def plot_alpha_history(probabilities: np.ndarray, temperatures: list[float], path: str) -> None:
    """Stacked areas: mean probability of each op over a cell type's edges, per epoch; plus the temperature."""
    probabilities = np.asarray(probabilities)  # (epochs, cell types, edges, ops)
    epochs = np.arange(1, probabilities.shape[0] + 1)
    fig, axes = plt.subplots(1, len(CELL_TYPES) + 1, figsize=(4 * (len(CELL_TYPES) + 1), 3.5))
    for ax, (i, cell_type) in zip(axes, enumerate(CELL_TYPES)):
        mean = probabilities[:, i].mean(axis=1).T  # (ops, epochs)
        ax.stackplot(epochs, mean, labels=PRIMITIVES, colors=[_COLOURS[p] for p in PRIMITIVES],
                     step="mid" if len(epochs) == 1 else None)
        ax.set_title(cell_type.replace("_", "-"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("mean softmax(alpha) over edges")
    axes[len(CELL_TYPES) - 1].legend(fontsize=6, loc="upper right")
    axes[-1].plot(epochs, temperatures, marker="o")
    axes[-1].set_title("Gumbel temperature", fontsize=9)
    axes[-1].set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
