"""Test-set metrics written into every run's metrics.json."""

from __future__ import annotations

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probs, -1) == labels))


def _binary_auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney form of the area under the ROC curve; ties count one half."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: AUROC of P(class 1); several classes: mean one-vs-rest AUROC."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    if probs.shape[1] == 2:
        return _binary_auroc(probs[:, 1], labels == 1)
    per_class = [_binary_auroc(probs[:, c], labels == c) for c in range(probs.shape[1])]
    return float(np.nanmean(per_class))


def soft_cross_entropy(probs: np.ndarray, targets: np.ndarray) -> float:
    """Mean −Σ t·log p over examples: the val loss early stopping watches (targets one-hot for
    ground truth, a supervisor's probabilities for w2s runs)."""
    return float(-np.mean(np.sum(targets * np.log(np.maximum(probs, 1e-12)), -1)))
