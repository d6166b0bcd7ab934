"""RouteLLM cascade metrics (APGR, CPT), the non-monotone flag and measured costs, against
values worked out by hand on six examples."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.cascade import apgr, cpt, deferral_curve, monotonicity, share_for_pgr
from analysis.cli import main
from analysis.synthetic import write_run

# Six examples, label 1, listed by ascending weak confidence (.55 .6 .65 .7 .75 .8).
# weak correct:   F T T F F F  -> a_weak = 2/6
# strong correct: T F F T T T  -> a_strong = 4/6
# correct answers after deferring m = 0..6 examples: 2 3 2 1 2 3 4
LABELS = np.ones(6, dtype=int)
WEAK_P1 = [0.45, 0.6, 0.65, 0.3, 0.25, 0.2]
STRONG_P1 = [0.9, 0.1, 0.1, 0.9, 0.9, 0.9]


def binary_probs(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def _curve():
    return deferral_curve(binary_probs(WEAK_P1), binary_probs(STRONG_P1), LABELS)


def test_apgr_and_cpt_by_hand():
    c = _curve()
    np.testing.assert_allclose(c.accuracy * 6, [2, 3, 2, 1, 2, 3, 4])
    # trapezoids of width 1/6 over counts/6: (2.5 + 2.5 + 1.5 + 1.5 + 2.5 + 3.5) / 36 = 14/36
    assert apgr(c) == pytest.approx((14 / 36 - 2 / 6) / (4 / 6 - 2 / 6))  # = 1/6
    # CPT(x): first m with count ≥ 2 + 2x: 20 % → 2.4 and 50 % → 3 at m = 1; 80 % → 3.6 at m = 6
    levels = cpt(c, (0.2, 0.5, 0.8))
    assert levels[0.2] == pytest.approx(1 / 6) and levels[0.5] == pytest.approx(1 / 6)
    assert levels[0.8] == pytest.approx(1.0)
    assert share_for_pgr is cpt  # the earlier name is the same function
    flat = deferral_curve(binary_probs(WEAK_P1), binary_probs(WEAK_P1), LABELS)
    assert math.isnan(apgr(flat)) and all(math.isnan(v) for v in cpt(flat).values())


def test_non_monotone_flag_by_hand():
    # counts 2 3 2 1 2 3 4: best so far before m = 3 is 3, and 1 is two examples below it
    m = monotonicity(_curve())
    assert not m.monotone and m.nonmonotone_share == pytest.approx(1 / 6) and m.n_drops == 2
    # counts 3 4 3 4 4 4: one drop of a single example is tolerated
    weak = binary_probs([0.45, 0.6, 0.35, 0.8, 0.9])
    strong = binary_probs([0.9, 0.1, 0.9, 0.9, 0.9])
    c = deferral_curve(weak, strong, np.ones(5, dtype=int))
    np.testing.assert_allclose(c.accuracy * 5, [3, 4, 3, 4, 4, 4])
    m = monotonicity(c)
    assert m.monotone and m.nonmonotone_share == 0.0 and m.n_drops == 1


@pytest.fixture
def store(tmp_path):
    """The six examples as a weak and a ceiling run (val = test) with measured inference times:
    weak 0.002 s, strong 0.02 s per example."""
    labels = {"test": LABELS, "val": LABELS}
    weak = {k: binary_probs(WEAK_P1) for k in labels}
    strong = {k: binary_probs(STRONG_P1) for k in labels}
    write_run(tmp_path, "weak", "weak", "t", 0, labels, weak, weak_model="w", weak_params=1e6,
              extra={"predict_seconds_per_example": 0.002})  # fmt: skip
    write_run(tmp_path, "ceiling", "ceil", "t", 0, labels, strong, strong_model="s",
              strong_params=1e8, extra={"predict_seconds_per_example": 0.02})  # fmt: skip
    write_run(tmp_path, "w2s", "w2s", "t", 0, labels, strong, weak_model="w", strong_model="s",
              loss="xent", weak_params=1e6, strong_params=1e8, weak_run="weak",
              extra={"weak_runs": ["weak"], "ceiling_run": "ceil"})  # fmt: skip
    return tmp_path


def _run(root, out, *extra):
    argv = [str(root), "--out", str(out), "--no-plots", "--quiet", "--n-resamples", "200"]
    assert main([*argv, *extra]) == 0
    return (
        pd.read_csv(out / "cascade.csv").iloc[0],
        pd.read_csv(out / "cascade_budgets.csv").iloc[0],
    )


def test_cascade_tables_use_measured_seconds(store, tmp_path):
    table, budget = _run(store, tmp_path / "a")
    assert table["apgr"] == pytest.approx(1 / 6)
    assert table["cpt20"] == pytest.approx(1 / 6) and table["cpt80"] == pytest.approx(1.0)
    assert not table["monotone"] and table["n_nonmonotone"] == 1
    assert table["nonmonotone_share"] == pytest.approx(1 / 6)
    assert table["cost_unit"] == "seconds per example (measured)"
    assert table["cost_weak"] == pytest.approx(0.002)
    assert table["cost_strong"] == pytest.approx(0.02)
    assert table["cost_cpt50"] == pytest.approx(0.002 + 0.02 / 6)
    # default budget c_weak + 0.5·c_strong = 0.012 s: at most 3 of 6 deferred on val; the best
    # of counts 2 3 2 1 is one deferral (τ between .55 and .6), so 1/6 of the test calls
    assert budget["budget"] == pytest.approx(0.012)
    assert budget["tau"] == pytest.approx(0.575) and budget["test_share"] == pytest.approx(1 / 6)
    assert budget["test_accuracy"] == pytest.approx(3 / 6)
    assert budget["test_seconds"] == pytest.approx(0.002 + 0.02 / 6)
    assert budget["test_cost"] == pytest.approx(budget["test_seconds"])
    md = (tmp_path / "a" / "cascade.md").read_text()
    assert "APGR" in md and "CPT(50%)" in md and "no (1/1; 17%)" in md
    assert "seconds per example (measured)" in md


def test_given_costs_override_but_seconds_stay_measured(store, tmp_path):
    table, budget = _run(store, tmp_path / "b", "--cost-weak", "1", "--cost-strong", "10")
    assert table["cost_unit"].startswith("given")
    assert budget["budget"] == pytest.approx(6.0)  # 1 + 0.5·10
    assert budget["test_cost"] == pytest.approx(1 + 10 / 6)
    assert budget["test_seconds"] == pytest.approx(0.002 + 0.02 / 6)


def test_costs_fall_back_to_parameters_without_measured_times(tmp_path):
    labels = {"test": LABELS, "val": LABELS}
    weak = {k: binary_probs(WEAK_P1) for k in labels}
    strong = {k: binary_probs(STRONG_P1) for k in labels}
    write_run(tmp_path, "weak", "weak", "t", 0, labels, weak, weak_model="w", weak_params=1e6)
    write_run(tmp_path, "ceiling", "ceil", "t", 0, labels, strong, strong_model="s",
              strong_params=1e8)  # fmt: skip
    write_run(tmp_path, "w2s", "w2s", "t", 0, labels, strong, weak_model="w", strong_model="s",
              loss="xent", weak_params=1e6, strong_params=1e8, weak_run="weak")  # fmt: skip
    table, budget = _run(tmp_path, tmp_path / "c")
    assert table["cost_unit"] == "parameters" and table["cost_strong"] == pytest.approx(1e8)
    assert math.isnan(budget["test_seconds"])
