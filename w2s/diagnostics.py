"""Signs that a run's number is not a W2S result: training that had not finished, supervision
too uncertain to teach anything, predictions collapsed to one class.

A strong model trained on a near-uniform supervisor learns its random tilt, and a run still
far from a plateau reports where it happened to stop; both make PGR noise. Each check is
recorded with its measured value, so a table can flag the run and a reader can judge.
"""

from __future__ import annotations

import numpy as np

TREND_WINDOW = 0.2  # the last 20 % of steps
NOT_CONVERGED_DROP = 0.05  # fitted loss still falling by more than 5 % over that window
NEAR_UNIFORM = 0.1  # mean top probability within 10 % of the way from uniform to certain
COLLAPSED_SHARE = 0.95  # this share of test predictions in one class


def per_step_losses(history: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of every step the loop reported (reports come every few steps)."""
    steps, losses = [], []
    for rec in history:
        values = np.asarray(rec["losses"], dtype=float).reshape(len(rec["losses"]), -1).mean(1)
        steps.extend(range(rec["step"] - len(values) + 1, rec["step"] + 1))
        losses.extend(values)
    return np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)


def loss_trend(history: list[dict], window: float = TREND_WINDOW) -> float:
    """Relative change of the least-squares line through the last ``window`` of step losses,
    from the window's first step to its last, over the window's mean loss (−0.1: still
    falling by 10 %). NaN with fewer than 3 steps in the window."""
    steps, losses = per_step_losses(history)
    if len(steps) == 0:
        return float("nan")
    start = steps[-1] - window * steps[-1]
    sel = steps >= start
    x, y = steps[sel], losses[sel]
    if len(x) < 3 or np.ptp(x) == 0:
        return float("nan")
    slope = np.polyfit(x, y, 1)[0]
    mean = float(np.mean(y))
    return float(slope * np.ptp(x) / mean) if mean > 0 else float("nan")


def mean_confidence(probs: np.ndarray | None) -> float:
    return float("nan") if probs is None or len(probs) == 0 else float(probs.max(-1).mean())


def near_uniform(confidence: float, num_labels: int, margin: float = NEAR_UNIFORM) -> bool:
    """Mean top probability within ``margin`` of the way from 1/C (uniform) to 1."""
    uniform = 1.0 / num_labels
    return bool(confidence < uniform + margin * (1.0 - uniform))


def majority_share(probs: np.ndarray) -> float:
    """Share of examples predicted as the most predicted class."""
    counts = np.bincount(probs.argmax(-1), minlength=probs.shape[-1])
    return float(counts.max() / max(counts.sum(), 1))


def val_still_falling(val_loss_curve: list[list]) -> bool:
    """An early-stopped run's budget ran out while its val loss was at its lowest yet: the
    last evaluation is the best, so more epochs might still have helped."""
    if not val_loss_curve:
        return False
    losses = [loss for _, loss in val_loss_curve]
    return int(np.argmin(losses)) == len(losses) - 1


def diagnose(
    history,
    probs: dict,
    test_labels: np.ndarray,
    num_labels: int,
    supervision=None,
    *,
    val_loss_curve: list[list] | None = None,
) -> dict:
    """The measured values and the flags raised for one run (``supervision``: the probabilities
    a w2s run was taught on B). An early-stopped run (``val_loss_curve`` given) has finished
    learning when its val loss stopped falling, whatever its training loss still does; the
    others are judged by the trend of their training loss."""
    trend = loss_trend(history)
    test_conf = mean_confidence(probs["test"])
    sup_conf = mean_confidence(supervision)
    share = majority_share(probs["test"])
    flags = []
    if val_loss_curve is not None:
        if val_still_falling(val_loss_curve):
            flags.append("not_converged")
    elif np.isfinite(trend) and trend < -NOT_CONVERGED_DROP:
        flags.append("not_converged")
    if supervision is not None and near_uniform(sup_conf, num_labels):
        flags.append("near_uniform_supervision")
    if near_uniform(test_conf, num_labels):
        flags.append("near_uniform_predictions")
    label_share = np.bincount(test_labels, minlength=num_labels).max() / max(len(test_labels), 1)
    if share >= COLLAPSED_SHARE and label_share < COLLAPSED_SHARE:
        flags.append("collapsed")
    return {
        "loss_trend_last20": trend,
        "confidence_test": test_conf,
        "supervision_confidence": sup_conf if supervision is not None else None,
        "majority_share_test": share,
        "flags": flags,
    }
