"""Our pictures keep matplotlib's default style even after nnU-Net's logger has restyled the training process."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import seaborn as sns

from nnunet_autoaug import plots
from nnunet_autoaug.nas import plots as nas_plots
from nnunet_autoaug.rl import plots as rl_plots


@pytest.fixture
def nnunet_logger_style():
    sns.set(font_scale=2.5)  # what nnU-Net's logger does before drawing progress.png
    yield
    sns.reset_orig()


def test_plots_draw_with_matplotlib_defaults_after_nnunets_logger(nnunet_logger_style: None, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    restyled_size = plt.rcParams["font.size"]
    assert restyled_size > 20  # the fixture really restyled the process
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)  # keep the figure to look at its labels
    history = np.full((3, 4), 0.25)
    plots.plot_stacked_probabilities(history, ["a", "b", "c", "d"], str(tmp_path / "p.png"), first_epoch=0)
    assert (tmp_path / "p.png").stat().st_size > 1000
    label = figures[0].axes[0].xaxis.label
    assert label.get_text() == "epoch (0: start)" and label.get_size() == pytest.approx(10.0)
    assert plt.rcParams["font.size"] == restyled_size  # nnU-Net's own progress.png keeps its style


def test_every_public_plot_function_uses_the_default_style() -> None:
    functions = [getattr(m, name) for m in (plots, nas_plots, rl_plots) for name in dir(m) if name.startswith("plot_")]
    assert len(functions) == 6
    assert all(getattr(f, "__wrapped__", None) is not None for f in functions)


def test_augmentation_examples_show_every_image_channel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    target = torch.zeros(3, 1, 8, 16, 16)
    target[:, :, 2:6, 4:12, 4:12] = 1
    raw = torch.randn(3, 2, 8, 24, 24)
    augmented = torch.randn(3, 4, 8, 16, 16)  # a cascade appends one-hot channels after augmentation: not shown
    plots.plot_augmentation_examples(raw, augmented, target, str(tmp_path / "two.png"), max_samples=2)
    plots.plot_augmentation_examples(raw[:, :1], augmented[:, :1], target, str(tmp_path / "one.png"))
    two, one = ([ax.get_title() for ax in figure.axes] for figure in figures)
    assert two == ["crop 0, channel 0", "crop 1, channel 0", "augmented 0, channel 0", "augmented 1, channel 0",
                   "crop 0, channel 1", "crop 1, channel 1", "augmented 0, channel 1", "augmented 1, channel 1"]
    assert one == ["crop 0", "crop 1", "crop 2", "augmented 0", "augmented 1", "augmented 2"]
    assert len(figures[0].axes[2].collections) > 0  # label contours on the augmented rows
    assert (tmp_path / "two.png").stat().st_size > 1000
