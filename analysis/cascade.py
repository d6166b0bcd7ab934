"""Weak→strong cascade: the weak model answers and defers its least confident examples to the
strong model.

The deferral curve gives accuracy for every deferral count m = 0..n (share r = m/n), deferring in
order of ascending weak confidence (max probability; ties keep the example order). References:
random deferral (expected accuracy is the straight line from weak-only to strong-only) and an
oracle that defers first the weak errors the strong model fixes, then the other weak errors, and
last the examples only the weak model gets right — the best curve any ordering can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PGR_LEVELS = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class DeferralCurve:
    """Accuracy after deferring the first m examples, m = 0..n, for the cascade and references."""

    share: np.ndarray
    accuracy: np.ndarray
    random: np.ndarray
    oracle: np.ndarray

    @property
    def acc_weak(self) -> float:
        return float(self.accuracy[0])

    @property
    def acc_strong(self) -> float:
        return float(self.accuracy[-1])


def _curve_for_order(
    weak_correct: np.ndarray, strong_correct: np.ndarray, order: np.ndarray
) -> np.ndarray:
    gain = strong_correct[order].astype(float) - weak_correct[order].astype(float)
    return (weak_correct.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / len(weak_correct)


def deferral_curve(
    weak_probs: np.ndarray, strong_probs: np.ndarray, labels: np.ndarray
) -> DeferralCurve:
    """The cascade's deferral curve and both reference curves on one split."""
    labels = np.asarray(labels)
    return scored_deferral_curve(
        weak_probs.max(axis=1), weak_probs.argmax(axis=1) == labels,
        strong_probs.argmax(axis=1) == labels,
    )


def scored_deferral_curve(
    weak_confidence: np.ndarray, weak_correct: np.ndarray, strong_correct: np.ndarray
) -> DeferralCurve:
    """:func:`deferral_curve` from each example's weak confidence and both models'
    correctness (what a generative run records: it has no class probabilities)."""
    weak_correct, strong_correct = np.asarray(weak_correct), np.asarray(strong_correct)
    n = len(weak_correct)
    if n == 0:
        raise ValueError("deferral curve needs at least one example")
    share = np.arange(n + 1) / n
    order = np.argsort(np.asarray(weak_confidence), kind="stable")
    accuracy = _curve_for_order(weak_correct, strong_correct, order)
    gain = strong_correct.astype(int) - weak_correct.astype(int)
    oracle_order = np.lexsort((weak_correct, -gain))  # gain descending, then weak errors first
    oracle = _curve_for_order(weak_correct, strong_correct, oracle_order)
    random = accuracy[0] + share * (accuracy[-1] - accuracy[0])
    return DeferralCurve(share, accuracy, random, oracle)


def audc(share: np.ndarray, accuracy: np.ndarray) -> float:
    """Area under a deferral curve over r ∈ [0, 1] (trapezoid rule)."""
    return float(np.trapezoid(accuracy, share))


def normalised_audc(curve: DeferralCurve) -> float:
    """(AUDC − random) / (oracle − random): 0 is no better than random deferral, 1 is the oracle."""
    a, rand, orac = (
        audc(curve.share, curve.accuracy),
        audc(curve.share, curve.random),
        audc(curve.share, curve.oracle),
    )
    return float((a - rand) / (orac - rand)) if orac - rand > 1e-12 else float("nan")


def cpt(
    curve: DeferralCurve, levels: tuple[float, ...] = PGR_LEVELS, eps: float = 0.0
) -> dict[float, float]:
    """RouteLLM's call-performance threshold CPT(x): the smallest share of strong calls s at which
    the cascade reaches a(s) ≥ a_weak + x·(a_strong − a_weak), for each level x.

    NaN for every level when the gap a_strong − a_weak is ≤ ``eps`` (same policy as for PGR) and
    for a level never reached.
    """
    gap = curve.acc_strong - curve.acc_weak
    if gap <= eps:
        return {lv: float("nan") for lv in levels}
    recovered = (curve.accuracy - curve.acc_weak) / gap
    out = {}
    for lv in levels:
        hit = np.flatnonzero(recovered >= lv - 1e-12)
        out[lv] = float(curve.share[hit[0]]) if hit.size else float("nan")
    return out


# The earlier name: the share of strong calls at which the cascade recovers a level of the gap
# is exactly CPT.
share_for_pgr = cpt


def apgr(curve: DeferralCurve, eps: float = 0.0) -> float:
    """RouteLLM's average performance gap recovered: (∫₀¹ a(s) ds − a_weak)/(a_strong − a_weak).

    The integral is the AUDC (trapezoid rule over the share of strong calls s). Random deferral
    scores 0.5; above 1 means the cascade beats the strong model over much of the range. NaN when
    the gap is ≤ ``eps``.
    """
    gap = curve.acc_strong - curve.acc_weak
    if gap <= eps:
        return float("nan")
    return float((audc(curve.share, curve.accuracy) - curve.acc_weak) / gap)


@dataclass(frozen=True)
class Monotonicity:
    """Where a deferral curve goes down as more examples go to the strong model."""

    monotone: bool  # never more than one example below its best at a smaller share
    nonmonotone_share: float  # share of the n steps more than one example below that best
    n_drops: int  # steps at which accuracy falls (the deferred example: weak right, strong wrong)


def monotonicity(curve: DeferralCurve) -> Monotonicity:
    """Each step defers one example, so accuracy moves by at most one example; a curve is called
    non-monotone when it falls more than one example below its best at a smaller share of strong
    calls (a single unlucky deferral is tolerated)."""
    n = len(curve.accuracy) - 1
    correct = np.rint(curve.accuracy * n).astype(np.int64)  # correct answers after m deferrals
    best = np.maximum.accumulate(correct)
    below = correct[1:] < best[:-1] - 1
    n_drops = int(np.sum(np.diff(correct) < 0))
    return Monotonicity(not below.any(), float(below.mean()) if n else 0.0, n_drops)


def cascade_cost(share, c_weak: float, c_strong: float):
    """Cost per example: the weak model always runs, the strong model on the deferred share."""
    return c_weak + np.asarray(share, dtype=float) * c_strong


@dataclass(frozen=True)
class BudgetChoice:
    """A confidence threshold τ chosen on val under a cost budget, and how it did on test."""

    budget: float
    tau: float
    val_accuracy: float
    val_share: float
    test_accuracy: float = float("nan")
    test_share: float = float("nan")
    test_cost: float = float("nan")


def threshold_for_budget(
    val_confidence: np.ndarray,
    val_weak_correct: np.ndarray,
    val_strong_correct: np.ndarray,
    budget: float,
    c_weak: float,
    c_strong: float,
) -> BudgetChoice:
    """The τ (defer when confidence < τ) with the highest val accuracy whose val cost ≤ budget.

    Candidates sit halfway between consecutive distinct val confidences, plus τ = 0 (never defer)
    and τ = ∞ (always defer). Ties in accuracy go to the cheaper threshold. τ is NaN when even the
    weak model alone exceeds the budget.
    """
    conf = np.asarray(val_confidence, dtype=float)
    order = np.argsort(conf, kind="stable")
    conf = conf[order]
    gain = np.asarray(val_strong_correct, float)[order] - np.asarray(val_weak_correct, float)[order]
    n = len(conf)
    acc = (np.sum(val_weak_correct) + np.concatenate([[0.0], np.cumsum(gain)])) / n
    distinct = np.unique(conf)
    counts = np.searchsorted(conf, distinct, side="left")  # deferred when τ sits just below each
    taus = np.concatenate([[0.0], (distinct[:-1] + distinct[1:]) / 2, [np.inf]])
    deferred = np.concatenate([[0], counts[1:], [n]])
    share = deferred / n
    feasible = cascade_cost(share, c_weak, c_strong) <= budget + 1e-12
    if not feasible.any():
        return BudgetChoice(budget, float("nan"), float("nan"), float("nan"))
    cand_acc = np.where(feasible, acc[deferred], -np.inf)
    best = int(np.flatnonzero(cand_acc == cand_acc.max())[0])  # first = fewest deferrals
    return BudgetChoice(budget, float(taus[best]), float(acc[deferred[best]]), float(share[best]))


def apply_threshold(
    choice: BudgetChoice,
    confidence: np.ndarray,
    weak_correct: np.ndarray,
    strong_correct: np.ndarray,
    c_weak: float,
    c_strong: float,
) -> BudgetChoice:
    """Score a val-chosen threshold on another split (test)."""
    if np.isnan(choice.tau):
        return choice
    defer = np.asarray(confidence) < choice.tau
    acc = float(np.mean(np.where(defer, strong_correct, weak_correct)))
    share = float(defer.mean())
    return BudgetChoice(
        choice.budget,
        choice.tau,
        choice.val_accuracy,
        choice.val_share,
        acc,
        share,
        float(cascade_cost(share, c_weak, c_strong)),
    )
