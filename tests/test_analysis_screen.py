"""Screening a suite: which tasks have a weak–ceiling gap, from weak and ceiling runs alone.

On 400 test examples the weak run is right on the first W and the ceiling on the first C, so
the gap is (C − W)/400 and the paired SE is known by hand: c_i − w_i is 1 on C − W examples and
0 elsewhere, so SE = sqrt(p(1 − p)·n/(n − 1) / n) with p = (C − W)/n.
"""

import math

import numpy as np
import pytest

from analysis.cli import main
from analysis.predictions import PredictionStore
from analysis.runs import load_runs
from analysis.screen import gap_pairs, screen
from analysis.synthetic import write_run

N = 400
# task -> per seed (W, C): "wide" gaps of 40 points, "none" under 1 point (< 2 SE), "mixed" one of each
SPEC = {
    "wide": [(200, 360), (210, 370), (205, 365)],
    "none": [(300, 303), (300, 302), (300, 301)],
    "mixed": [(200, 360), (300, 302)],
}


def _probs(n_correct, labels):
    pred = np.where(np.arange(len(labels)) < n_correct, labels, 1 - labels)
    probs = np.full((len(labels), 2), 0.3)
    probs[np.arange(len(labels)), pred] = 0.7
    return probs


def _se(w, c, n=N):
    p = (c - w) / n
    return math.sqrt(p * (1 - p) * n / (n - 1) / n)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("screen")
    labels = {"test": np.arange(N) % 2, "val": np.arange(20) % 2}
    for task, seeds in SPEC.items():
        for seed, (w, c) in enumerate(seeds):
            rows = {"rows": f"{task}-rows-{seed}"}
            for kind, n, model in (("weak", w, {"weak_model": "w"}),
                                   ("ceiling", c, {"strong_model": "s"})):
                probs = {"test": _probs(n, labels["test"]), "val": _probs(10, labels["val"])}
                write_run(root, kind, f"{task}-{kind}-{seed}", task, seed, labels, probs,
                          **model, extra=rows)
    # a ceiling run on other rows (another split) is nobody's partner
    probs = {"test": _probs(399, labels["test"]), "val": _probs(10, labels["val"])}
    write_run(root, "ceiling", "wide-ceiling-other", "wide", 0, labels, probs, strong_model="s",
              extra={"rows": "other-rows"})
    return root


def test_pairs_by_rows_with_the_paired_se_by_hand(results):
    runs, _ = load_runs(results)
    pairs = gap_pairs(runs, PredictionStore())
    assert len(pairs) == 8 and "wide-ceiling-other" not in set(pairs["ceiling_run"])
    for r in pairs.itertuples():
        w, c = SPEC[r.task][r.seed]
        assert r.weak_run == f"{r.task}-weak-{r.seed}"
        assert r.gap == pytest.approx((c - w) / N)
        assert r.gap_se == pytest.approx(_se(w, c), rel=1e-9)
        assert r.gap_ok == ((c - w) / N >= 2 * _se(w, c))


def test_verdicts_and_t_interval(results):
    runs, _ = load_runs(results)
    summary = screen(gap_pairs(runs, PredictionStore())).set_index("task")
    assert dict(summary["verdict"]) == {"wide": "gap", "none": "none", "mixed": "mixed"}
    assert list(summary.index) == ["wide", "mixed", "none"]  # gap first, then mixed, none
    gaps = np.array([(c - w) / N for w, c in SPEC["wide"]])
    half = 4.302652729911275 * gaps.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert summary.loc["wide", "gap"] == pytest.approx(gaps.mean())
    assert (summary.loc["wide", "gap_lo"], summary.loc["wide", "gap_hi"]) == pytest.approx(
        (gaps.mean() - half, gaps.mean() + half))
    assert summary.loc["mixed", "n_seeds_gap_ok"] == 1


def test_cli_writes_the_screen_and_prints_it_without_w2s_runs(results, tmp_path, capsys):
    assert main([str(results), "--out", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "Weak–ceiling gap per task" in out and "mixed" in out
    md = (tmp_path / "screen.md").read_text()
    assert "95% Student-t interval over 2 seeds (wide" in md
    assert "1/2" in md and "3/3" in md and "0/3" in md
