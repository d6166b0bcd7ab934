"""How well a model's confidence ranks and matches its correctness: AURC, ECE and the data for
reliability diagrams. A cascade can only be as good as the weak model's confidence ranking, so
these explain the cascade numbers.

Confidence is the max predicted probability; correct means argmax == label.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

N_BINS = 15


def confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk (error rate among the k most confident) at coverage k/n, k = 1..n.

    Ties in confidence keep the example order (stable sort).
    """
    order = np.argsort(-np.asarray(confidence, dtype=float), kind="stable")
    errors = np.cumsum(~np.asarray(correct, bool)[order])
    k = np.arange(1, len(order) + 1)
    return k / len(order), errors / k


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve: the mean selective risk over coverages k/n.

    This is the discrete definition of Geifman et al. (2019); lower is better, and a perfect
    ranking of a model with error rate e gets about e + (1 − e)·ln(1 − e).
    """
    if len(confidence) == 0:
        return float("nan")
    return float(np.mean(risk_coverage(confidence, correct)[1]))


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS
) -> pd.DataFrame:
    """Equal-width confidence bins (lower, upper]; the first bin also takes confidence 0.

    Columns: bin_lower, bin_upper, count, confidence (mean), accuracy (mean); NaN in empty bins.
    """
    conf = np.asarray(confidence, dtype=float)
    corr = np.asarray(correct, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, minlength=n_bins) / count
        accuracy = np.bincount(idx, corr, minlength=n_bins) / count
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1],
            "bin_upper": edges[1:],
            "count": count,
            "confidence": mean_conf,
            "accuracy": accuracy,
        }
    )


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Expected calibration error: Σ_b (n_b / n)·|accuracy_b − confidence_b| over non-empty bins."""
    if len(confidence) == 0:
        return float("nan")
    bins = reliability_bins(confidence, correct, n_bins)
    full = bins[bins["count"] > 0]
    return float(
        np.sum(full["count"] * (full["accuracy"] - full["confidence"]).abs()) / len(confidence)
    )
