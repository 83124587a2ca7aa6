"""Evaluation metrics against simulated truth (no scikit-learn needed)."""

from __future__ import annotations

import numpy as np

__all__ = ["auc", "expected_calibration_error", "reliability_table", "spearman"]


def auc(score, truth) -> float:
    """Area under the ROC curve of ``score`` for the binary ``truth`` (Mann–Whitney, ties averaged)."""
    from scipy.stats import rankdata  # scipy.stats takes ~1 s to import: only when needed

    score = np.asarray(score, dtype=float)
    truth = np.asarray(truth, dtype=bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes in truth")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability_table(prob, truth, n_bins: int = 10):
    """Per-bin mean predicted probability, observed frequency and count (equal-width bins)."""
    import pandas as pd

    prob = np.asarray(prob, dtype=float)
    truth = np.asarray(truth, dtype=float)
    bins = np.minimum((prob * n_bins).astype(int), n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "predicted": prob, "observed": truth})
    return frame.groupby("bin").agg(predicted=("predicted", "mean"), observed=("observed", "mean"), n=("observed", "size"))


def expected_calibration_error(prob, truth, n_bins: int = 10) -> float:
    """Count-weighted mean |predicted - observed| over equal-width probability bins."""
    table = reliability_table(prob, truth, n_bins)
    return float((table["n"] * (table["predicted"] - table["observed"]).abs()).sum() / table["n"].sum())


def spearman(a, b) -> float:
    """Spearman rank correlation."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
