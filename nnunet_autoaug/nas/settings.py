"""SCNAS environment settings (nnU-Net trainers take no extra arguments). Defaults are the paper's widths."""
from __future__ import annotations

from nnunet_autoaug.settings import int_from_env

SEARCH_WIDTH_VAR = "nnUNet_autoaug_scnas_search_width"  # stem channels of the supernet (paper: 48)
WIDTH_VAR = "nnUNet_autoaug_scnas_width"  # stem channels of the registered network for retraining (paper: 68)
DEFAULT_SEARCH_WIDTH = 48
DEFAULT_WIDTH = 68


def search_width() -> int:
    return int_from_env(SEARCH_WIDTH_VAR, minimum=1) or DEFAULT_SEARCH_WIDTH


def retrain_width() -> int:
    return int_from_env(WIDTH_VAR, minimum=1) or DEFAULT_WIDTH
