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
