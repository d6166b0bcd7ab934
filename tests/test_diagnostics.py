"""Run diagnostics against hand-computed values: loss trend over the last 20 % of steps,
near-uniform supervision, collapse to one class."""

from __future__ import annotations

import numpy as np
import pytest

from w2s.diagnostics import diagnose, loss_trend, majority_share, near_uniform, per_step_losses


def _history(losses, every=10):
    """Reports as the train loop makes them: every ``every`` steps, that stretch's losses."""
    return [{"step": min(i + every, len(losses)), "losses": list(losses[i:i + every])}
            for i in range(0, len(losses), every)]


def test_loss_trend_of_a_line_and_a_plateau():
    steps = np.arange(1, 101)
    falling = 1.0 - 0.005 * steps
    s, v = per_step_losses(_history(falling))
    np.testing.assert_array_equal(s, steps)
    np.testing.assert_allclose(v, falling)
    # window: steps 80..100; fitted drop 0.005 * 20 = 0.1 over a mean loss of 1 - 0.005 * 90
    assert loss_trend(_history(falling)) == pytest.approx(-0.1 / 0.55)
    assert loss_trend(_history(np.full(100, 0.3))) == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(loss_trend(_history(np.ones(2))))


def test_seeds_side_by_side_average_per_step():
    rec = [{"step": 4, "losses": [[1.0, 3.0], [1.0, 1.0], [0.5, 0.5], [0.0, 1.0]]}]
    _, v = per_step_losses(rec)
    np.testing.assert_allclose(v, [2.0, 1.0, 0.5, 0.5])


def test_flags():
    assert near_uniform(0.54, 2) and not near_uniform(0.56, 2)
    assert near_uniform(1 / 3 + 0.06, 3) and not near_uniform(1 / 3 + 0.07, 3)
    labels = np.array([0, 1] * 50)
    one_class = np.tile([0.6, 0.4], (100, 1))
    assert majority_share(one_class) == 1.0
    history = _history(1.0 - 0.005 * np.arange(1, 101))
    d = diagnose(history, {"test": one_class}, labels, 2, supervision=np.tile([0.52, 0.48], (5, 1)))
    assert d["flags"] == ["not_converged", "near_uniform_supervision", "collapsed"]
    assert d["supervision_confidence"] == pytest.approx(0.52)
    assert d["confidence_test"] == pytest.approx(0.6) and d["majority_share_test"] == 1.0
    # a test set that is itself one class is no collapse; a confident, flat run raises nothing
    confident = np.tile([0.9, 0.1], (100, 1))
    d = diagnose(_history(np.full(100, 0.2)), {"test": confident}, np.zeros(100, int), 2)
    assert d["flags"] == [] and d["supervision_confidence"] is None
