"""Agreement between predicted and true global labels: MSE and intraclass correlation coefficients.

The ICCs follow Shrout & Fleiss (1979) / McGraw & Wong (1996) from a two-way ANOVA of the n x k table (cases x
"raters", here k = 2: truth and prediction):

- ICC(2,1), "absolute agreement, single measurement": (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n);
- ICC(3,1), "consistency, single measurement": (MSR - MSE) / (MSR + (k-1) MSE).

We report ICC(2,1) as the headline ``icc``: a regressor is meant to replace the manual measurement, so a constant
bias (e.g. every volume 10 % too large) must cost agreement, which ICC(3,1) ignores. ICC(3,1) is reported too, for
comparison with papers that use the consistency form; the Hydranet abstract does not say which form it used.
"""
from __future__ import annotations

import numpy as np


def _anova(table: np.ndarray) -> tuple[float, float, float, int, int]:
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise ValueError(f"need a cases x raters table with at least 2 of each, got shape {table.shape}")
    n, k = table.shape
    grand = table.mean()
    ss_rows = k * ((table.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((table.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((table - grand) ** 2).sum() - ss_rows - ss_cols
    return ss_rows / (n - 1), ss_cols / (k - 1), ss_error / ((n - 1) * (k - 1)), n, k


def icc_absolute_agreement(table: np.ndarray) -> float:
    """ICC(2,1) of an n x k table (two-way random effects, absolute agreement, single rater)."""
    msr, msc, mse, n, k = _anova(table)
    denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    return float((msr - mse) / denominator) if denominator > 0 else float("nan")


def icc_consistency(table: np.ndarray) -> float:
    """ICC(3,1) of an n x k table (two-way mixed effects, consistency, single rater)."""
    msr, _, mse, _, k = _anova(table)
    denominator = msr + (k - 1) * mse
    return float((msr - mse) / denominator) if denominator > 0 else float("nan")


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """MSE, RMSE, MAE, mean error (bias), Pearson r, ICC(2,1) and ICC(3,1) of predictions against targets."""
    p, t = np.asarray(predictions, dtype=np.float64), np.asarray(targets, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and targets {t.shape} must be equally long vectors")
    error = p - t
    result = {"n": len(p), "mse": float((error ** 2).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
              "mae": float(np.abs(error).mean()), "bias": float(error.mean())}
    if len(p) >= 2:
        table = np.stack([t, p], axis=1)
        result["icc"] = icc_absolute_agreement(table)
        result["icc_consistency"] = icc_consistency(table)
        result["pearson_r"] = float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else float("nan")
    return result
