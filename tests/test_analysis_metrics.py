"""Analysis metrics against values worked out by hand on small arrays."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.calibration import aurc, ece, reliability_bins, risk_coverage
from analysis.cascade import (
    apply_threshold,
    audc,
    cascade_cost,
    deferral_curve,
    normalised_audc,
    share_for_pgr,
    threshold_for_budget,
)
from analysis.pgr import aggregate_pgr, agreement, pgr
from analysis.stats import (
    bootstrap_mean_ci,
    grouped_mean_ci,
    joint_pattern_counts,
    pgr_example_bootstrap,
)


def binary_probs(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


# --- PGR -------------------------------------------------------------------------------------


def test_pgr_by_hand():
    assert pgr(0.7, 0.6, 0.8) == pytest.approx(0.5)
    assert pgr(0.6, 0.6, 0.8) == pytest.approx(0.0)
    assert pgr(0.85, 0.6, 0.8) == pytest.approx(1.25)  # w2s beats the ceiling: PGR > 1 is kept
    assert pgr(0.55, 0.6, 0.8) == pytest.approx(-0.25)
    out = pgr([0.7, 0.7, 0.7, 0.7], [0.6, 0.6, 0.8, 0.6], [0.8, 0.6, 0.6, 0.64], eps=0.05)
    assert out[0] == pytest.approx(0.5)
    assert np.isnan(out[1])  # ceiling == weak
    assert np.isnan(out[2])  # ceiling < weak
    assert np.isnan(out[3])  # gap 0.04 ≤ eps 0.05


def _pairs(rows):
    df = pd.DataFrame(rows, columns=["seed", "acc_weak", "acc_ceiling", "acc_w2s"])
    df["task"], df["weak_model"], df["strong_model"], df["loss"] = "t", "w", "s", "xent"
    df["w2s_run"] = [f"r{i}" for i in range(len(df))]
    df["paired"] = True
    df["weak_params"], df["strong_params"] = 1.0, 10.0
    df["gap_ok"] = df["acc_ceiling"] - df["acc_weak"] > 0
    df["pgr"] = pgr(df["acc_w2s"], df["acc_weak"], df["acc_ceiling"])
    df["pgr_auroc"] = np.nan
    df["agreement"] = np.nan
    df["pattern_counts"] = None
    return df


def test_aggregate_flags_ceiling_not_above_weak():
    # per-seed PGR: 0.5, 0.25, undefined (ceiling 0.6 ≤ weak 0.7), 1.0
    pairs = _pairs(
        [
            (0, 0.6, 0.8, 0.7),
            (1, 0.6, 1.0, 0.7),
            (2, 0.7, 0.6, 0.65),
            (3, 0.5, 0.7, 0.7),
        ]
    )
    s = aggregate_pgr(pairs, n_resamples=2000).iloc[0]
    assert s["n_runs"] == 4 and s["n_seeds"] == 3 and s["n_flagged"] == 1
    assert not s["gap_ok"]
    assert s["pgr_mean"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert s["pgr_median"] == pytest.approx(0.5)
    assert s["acc_weak"] == pytest.approx(0.6)  # accuracies keep the flagged seed
    # Student-t over the 3 defined seeds: mean ± t(0.975, 2)·sd/√3
    assert s["ci_method"] == "t"
    half = 4.302653 * np.std([0.5, 0.25, 1.0], ddof=1) / np.sqrt(3)
    assert s["pgr_ci_low"] == pytest.approx(s["pgr_mean"] - half, abs=1e-5)
    assert s["pgr_ci_high"] == pytest.approx(s["pgr_mean"] + half, abs=1e-5)
    assert np.isnan(s["pgr_boot_low"])  # no predictions: no two-level bootstrap


def test_aggregate_all_flagged_gives_nan_not_a_dropped_row():
    s = aggregate_pgr(_pairs([(0, 0.7, 0.7, 0.8)])).iloc[0]
    assert s["n_flagged"] == 1 and s["n_seeds"] == 0
    assert math.isnan(s["pgr_mean"]) and s["ci_method"] == "none"


def test_agreement():
    weak = binary_probs([0.9, 0.2, 0.6, 0.4])
    w2s = binary_probs([0.8, 0.7, 0.1, 0.3])
    assert agreement(weak, w2s) == pytest.approx(0.5)


# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_ci_covers_true_mean_95_percent():
    rng = np.random.default_rng(123)
    reps, n, hits = 400, 30, 0
    for rep in range(reps):
        sample = rng.normal(2.0, 1.5, n)
        lo, hi = bootstrap_mean_ci(sample, n_resamples=2000, seed=rep)
        hits += lo <= 2.0 <= hi
    coverage = hits / reps
    # the percentile bootstrap undercovers slightly at n = 30 (≈ 0.93–0.94)
    assert 0.91 <= coverage <= 0.98, coverage


def test_bootstrap_is_seeded_and_grouped_equals_single():
    x = np.array([0.1, 0.4, 0.35, 0.8, 0.5])
    assert bootstrap_mean_ci(x, seed=7) == bootstrap_mean_ci(x, seed=7)
    grouped = grouped_mean_ci([x, np.array([1.0, np.nan]), np.array([])], seed=7)
    assert tuple(grouped[0]) == pytest.approx(bootstrap_mean_ci(x, seed=7))
    assert tuple(grouped[1]) == (1.0, 1.0)  # one finite value: zero-width interval
    assert np.isnan(grouped[2]).all()


def test_example_bootstrap_matches_brute_force_resampling():
    rng = np.random.default_rng(5)
    n = 300
    weak = rng.random(n) < 0.6
    ceiling = rng.random(n) < 0.8
    w2s = np.where(rng.random(n) < 0.5, weak, ceiling)
    counts = joint_pattern_counts(weak, ceiling, w2s)
    assert counts.sum() == n and counts[7] == np.sum(weak & ceiling & w2s)
    lo, hi, bad = pgr_example_bootstrap(counts, n_resamples=4000, seed=1)
    idx = rng.integers(0, n, (4000, n))
    aw, ac, as_ = weak[idx].mean(1), ceiling[idx].mean(1), w2s[idx].mean(1)
    brute = np.percentile((as_ - aw) / (ac - aw), [2.5, 97.5])
    point = pgr(w2s.mean(), weak.mean(), ceiling.mean())
    assert lo < point < hi and bad == 0.0
    assert lo == pytest.approx(brute[0], abs=0.03) and hi == pytest.approx(brute[1], abs=0.03)


# --- cascade ---------------------------------------------------------------------------------

# Weak confidences 0.9, 0.6, 0.7, 0.55; weak correct T F T F; strong correct T T F T.
# Deferring by ascending weak confidence (examples 3, 1, 2, 0): acc = .5, .75, 1, .75, .75.
LABELS = np.ones(4, dtype=int)
WEAK = binary_probs([0.9, 0.4, 0.7, 0.45])
STRONG = binary_probs([0.8, 0.8, 0.3, 0.8])


def test_deferral_curve_and_references_by_hand():
    c = deferral_curve(WEAK, STRONG, LABELS)
    np.testing.assert_allclose(c.share, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(c.accuracy, [0.5, 0.75, 1.0, 0.75, 0.75])
    np.testing.assert_allclose(c.random, [0.5, 0.5625, 0.625, 0.6875, 0.75])
    # oracle: the two fixable weak errors, then the tie, then the example only weak gets right
    np.testing.assert_allclose(c.oracle, [0.5, 0.75, 1.0, 1.0, 0.75])


def test_audc_and_normalised_audc_by_hand():
    c = deferral_curve(WEAK, STRONG, LABELS)
    assert audc(c.share, c.accuracy) == pytest.approx(0.78125)
    assert audc(c.share, c.random) == pytest.approx(0.625)
    assert audc(c.share, c.oracle) == pytest.approx(0.84375)
    assert normalised_audc(c) == pytest.approx((0.78125 - 0.625) / (0.84375 - 0.625))


def test_share_of_strong_calls_for_pgr_levels():
    # weak correct by ascending confidence: F F F T T; strong always right.
    weak = binary_probs([0.45, 0.4, 0.35, 0.8, 0.9])
    strong = binary_probs([0.9] * 5)
    c = deferral_curve(weak, strong, np.ones(5, dtype=int))
    np.testing.assert_allclose(c.accuracy, [0.4, 0.6, 0.8, 1.0, 1.0, 1.0])
    shares = share_for_pgr(c, (0.2, 0.5, 0.8, 1.5))
    assert shares[0.2] == pytest.approx(0.2)  # PGR 1/3 at r = 0.2
    assert shares[0.5] == pytest.approx(0.4)  # PGR 2/3 at r = 0.4
    assert shares[0.8] == pytest.approx(0.6)  # PGR 1 at r = 0.6
    assert math.isnan(shares[1.5])  # never reached
    flat = deferral_curve(weak, weak, np.ones(5, dtype=int))  # strong == weak: gap 0
    assert all(math.isnan(v) for v in share_for_pgr(flat).values())


def test_threshold_for_budget_on_val_scored_on_test():
    val_conf = np.array([0.55, 0.6, 0.7, 0.9])
    val_weak = np.array([0, 1, 0, 1], bool)
    val_strong = np.ones(4, bool)
    # c_weak 1, c_strong 10, budget 6 → at most half the examples may be deferred
    choice = threshold_for_budget(val_conf, val_weak, val_strong, budget=6, c_weak=1, c_strong=10)
    assert choice.tau == pytest.approx(0.575)  # deferring 1 or 2 both give .75: the cheaper wins
    assert choice.val_accuracy == pytest.approx(0.75) and choice.val_share == pytest.approx(0.25)
    test = apply_threshold(
        choice,
        np.array([0.5, 0.58, 0.6, 0.95]),
        np.array([0, 0, 1, 1], bool),
        np.array([1, 1, 0, 1], bool),
        c_weak=1,
        c_strong=10,
    )
    assert test.test_accuracy == pytest.approx(0.75)
    assert test.test_share == pytest.approx(0.25) and test.test_cost == pytest.approx(3.5)
    rich = threshold_for_budget(val_conf, val_weak, val_strong, budget=100, c_weak=1, c_strong=10)
    assert rich.tau == pytest.approx(0.8) and rich.val_accuracy == 1.0
    poor = threshold_for_budget(val_conf, val_weak, val_strong, budget=0.5, c_weak=1, c_strong=10)
    assert math.isnan(poor.tau)
    assert cascade_cost(0.4, 1.0, 10.0) == pytest.approx(5.0)


# --- calibration -----------------------------------------------------------------------------


def test_aurc_by_hand():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 0, 1, 0], bool)
    coverage, risk = risk_coverage(conf, correct)
    np.testing.assert_allclose(coverage, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(risk, [0, 0.5, 1 / 3, 0.5])
    assert aurc(conf, correct) == pytest.approx(1 / 3)
    # order must not matter, only confidence
    assert aurc(conf[::-1], correct[::-1]) == pytest.approx(1 / 3)


def test_ece_by_hand():
    conf = np.array([0.95, 0.85, 0.82, 0.65, 0.62])
    correct = np.array([1, 1, 0, 1, 0], bool)
    # bins (.9,1]: |1 − .95|·1; (.8,.9]: |.5 − .835|·2; (.6,.7]: |.5 − .635|·2; over 5 examples
    assert ece(conf, correct, n_bins=10) == pytest.approx((0.05 + 0.67 + 0.27) / 5)
    bins = reliability_bins(conf, correct, n_bins=10)
    assert bins["count"].sum() == 5 and list(bins["count"].iloc[6:]) == [2, 0, 2, 1]
    # a confidence on a bin edge belongs to the bin it closes: 0.6 ∈ (0.4, 0.6]
    edge = reliability_bins(np.array([0.6, 1.0, 0.0]), np.array([1, 1, 0], bool), n_bins=5)
    assert list(edge["count"]) == [1, 0, 1, 0, 1]
    assert ece(np.ones(3), np.ones(3, bool)) == pytest.approx(0.0)
