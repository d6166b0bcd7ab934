"""Splits: exact sizes, disjoint, reproducible from the seed, balanced when asked."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from w2s.config import TaskConfig
from w2s.data import SPLITS, TaskData, make_splits
from w2s.data.splits import class_totals, spread


def _data(labels: list[int] | np.ndarray, num_labels: int = 2) -> TaskData:
    labels = np.asarray(labels)
    n = len(labels)
    names = [f"c{k}" for k in range(num_labels)]
    return TaskData(
        "toy", [f"t{i}" for i in range(n)], labels, [str(i) for i in range(n)], num_labels, names
    )


def _cfg(a=30, b=20, val=10, test=15, **kw) -> TaskConfig:
    return TaskConfig(name="toy", kind="local", n_a=a, n_b=b, n_val=val, n_test=test, **kw)


def test_sizes_disjoint_and_deterministic():
    data = _data(np.arange(100) % 2)
    s = make_splits(data, _cfg(), seed=3)
    assert list(s) == list(SPLITS)
    assert [len(s[k]) for k in SPLITS] == [30, 20, 10, 15]
    allidx = np.concatenate(list(s.values()))
    assert len(np.unique(allidx)) == 75 and allidx.min() >= 0 and allidx.max() < 100
    assert all(v.dtype == np.int64 for v in s.values())
    again = make_splits(data, _cfg(), seed=3)
    assert all(np.array_equal(s[k], again[k]) for k in SPLITS)
    other = make_splits(data, _cfg(), seed=4)
    assert not np.array_equal(s["a"], other["a"])


def test_split_seed_overrides_the_run_seed():
    data = _data(np.arange(100) % 2)
    s1 = make_splits(data, _cfg(split_seed=7), seed=1)
    s2 = make_splits(data, _cfg(split_seed=7), seed=2)
    assert all(np.array_equal(s1[k], s2[k]) for k in SPLITS)


def test_zero_sized_split_is_allowed():
    s = make_splits(_data(np.arange(10) % 2), _cfg(a=5, b=5, val=0, test=0), seed=0)
    assert len(s["val"]) == 0 and len(s["test"]) == 0


def test_balanced_splits_are_exactly_balanced_when_possible():
    labels = np.array([0] * 80 + [1] * 40)  # imbalanced pool, enough of each
    data = _data(labels)
    s = make_splits(data, _cfg(a=30, b=20, val=10, test=15, balance=True), seed=0)
    for k, n in zip(SPLITS, (30, 20, 10, 15), strict=True):
        counts = np.bincount(labels[s[k]], minlength=2)
        assert counts.sum() == n and abs(int(counts[0]) - int(counts[1])) <= 1, (k, counts)
    assert len(np.unique(np.concatenate(list(s.values())))) == 75


def test_balance_three_classes():
    labels = np.arange(90) % 3
    s = make_splits(_data(labels, 3), _cfg(a=30, b=21, val=9, test=15, balance=True), seed=5)
    for k in SPLITS:
        counts = np.bincount(labels[s[k]], minlength=3)
        assert counts.max() - counts.min() <= 1, (k, counts)


def test_short_class_gives_all_it_has_spread_over_splits(caplog):
    labels = np.array([0] * 100 + [1] * 20)
    with caplog.at_level(logging.WARNING, logger="w2s.data"):
        s = make_splits(_data(labels), _cfg(a=40, b=20, val=0, test=20, balance=True), seed=0)
    per = {k: np.bincount(labels[s[k]], minlength=2).tolist() for k in SPLITS}
    # 80 needed, class 1 has 20: all 20 are used, in proportion to split sizes (40:20:0:20)
    assert per == {"a": [30, 10], "b": [15, 5], "val": [0, 0], "test": [15, 5]}
    assert "too few examples of class 'c1' (20)" in caplog.text


def test_class_totals_water_filling():
    assert class_totals(np.array([100, 100]), 50).tolist() == [25, 25]
    assert class_totals(np.array([100, 10, 100]), 90).tolist() == [40, 10, 40]
    assert class_totals(np.array([100, 0]), 7).tolist() == [7, 0]
    assert class_totals(np.array([5, 9]), 13).tolist() == [5, 8]
    assert class_totals(np.array([50, 60]), 11).tolist() == [5, 6]  # odd one to most spare


def test_spread_keeps_row_and_column_sums():
    out = spread(np.array([501, 500]), [333, 333, 200, 135])
    assert out.sum(axis=1).tolist() == [333, 333, 200, 135]
    assert out.sum(axis=0).tolist() == [501, 500]
    assert (np.abs(out[:, 0] - out[:, 1]) <= 1).all()


def test_unbalanced_draw_leaves_class_mix_to_chance():
    labels = np.array([0] * 90 + [1] * 10)
    s = make_splits(_data(labels), _cfg(a=50, b=50, val=0, test=0), seed=0)
    assert np.bincount(labels[np.concatenate([s["a"], s["b"]])]).tolist() == [90, 10]


@pytest.mark.parametrize("seed", [0, 1])
def test_balanced_split_is_deterministic(seed):
    data = _data(np.arange(60) % 2)
    cfg = _cfg(a=20, b=20, val=4, test=10, balance=True)
    s1, s2 = make_splits(data, cfg, seed), make_splits(data, cfg, seed)
    assert all(np.array_equal(s1[k], s2[k]) for k in SPLITS)
