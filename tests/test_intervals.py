"""Intervals over a few seeds: the t quantile, coverage by simulation, the paired SE of the
ceiling − weak gap and the tiny-gap rule, the two-level bootstrap, the CLI summary and the table."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from analysis.pgr import add_prediction_metrics, aggregate_pgr, flag_tiny_gaps, pair_runs
from analysis.predictions import PredictionStore
from analysis.runs import load_runs
from analysis.stats import grouped_mean_ci, pgr_example_bootstrap
from analysis.synthetic import make_results
from analysis.tables import main_table, render_latex, render_markdown
from w2s.stats import (
    describe_interval,
    grouped_two_level_bootstrap,
    joint_pattern_counts,
    paired_gap_se,
    paired_gap_se_counts,
    t_interval,
    t_quantile,
    tiny_gap,
    two_level_bootstrap,
    two_level_bootstrap_counts,
)
from w2s.store import RunStore
from w2s.summary import summarize

# --- Student-t ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "df, expected", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (9, 2.262157), (29, 2.045230)]
)
def test_t_quantile_known_values(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-5)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-5)


def test_t_quantile_other_levels_and_bad_input():
    assert t_quantile(0.995, 3) == pytest.approx(5.840909, abs=1e-5)
    assert t_quantile(0.95, 10) == pytest.approx(1.812461, abs=1e-5)
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)  # → normal
    assert t_quantile(0.5, 3) == 0.0
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


def test_t_interval_by_hand():
    v = [0.179, 0.333, 0.396, np.nan]  # the NaN is dropped
    lo, hi = t_interval(v)
    m, sd = np.mean(v[:3]), np.std(v[:3], ddof=1)
    assert (lo, hi) == pytest.approx((m - 4.302653 * sd / 3**0.5, m + 4.302653 * sd / 3**0.5))
    assert all(math.isnan(x) for x in t_interval([0.3]))
    assert all(math.isnan(x) for x in t_interval([]))


# --- coverage ----------------------------------------------------------------------------------


def _t_bounds(x: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[1]
    half = t_quantile((1 + level) / 2, n - 1) * x.std(axis=1, ddof=1) / np.sqrt(n)
    return x.mean(axis=1) - half, x.mean(axis=1) + half


def test_coverage_t_interval_vs_percentile_bootstrap_over_seeds():
    """2,000 simulated experiments per (n, distribution): the share of intervals that hold the
    true mean. The t-interval keeps 95 % on normal data; a percentile bootstrap over 3 seeds is
    about their range and covers far less."""
    rng = np.random.default_rng(2024)
    n_exp = 2000
    dists = {
        "normal": (lambda size: rng.normal(0.3, 0.1, size), 0.3),
        "lognormal": (lambda size: rng.lognormal(0.0, 1.0, size), math.exp(0.5)),
    }
    cover = {}
    for n in (3, 5, 10):
        for name, (draw, truth) in dists.items():
            x = draw((n_exp, n))
            lo, hi = _t_bounds(x)
            cover["t", n, name] = np.mean((lo <= truth) & (truth <= hi))
            ci = grouped_mean_ci(list(x), n_resamples=1000, seed=n)
            cover["percentile", n, name] = np.mean((ci[:, 0] <= truth) & (truth <= ci[:, 1]))
    for (method, n, name), c in sorted(cover.items()):
        print(f"coverage n={n:>2} {name:<9} {method:<10} {c:.3f}")
    for n in (3, 5, 10):
        assert 0.93 <= cover["t", n, "normal"] <= 0.97, cover["t", n, "normal"]
    assert cover["percentile", 3, "normal"] < 0.85  # the defect the t-interval fixes
    assert cover["t", 3, "normal"] - cover["percentile", 3, "normal"] > 0.1


def test_coverage_two_level_bootstrap_with_finite_test_sets():
    """Per-seed accuracies come from 500 test examples; the seed's true accuracies vary too.
    Reported, with loose checks: the two-level bootstrap is a sane interval by 10 seeds."""
    rng = np.random.default_rng(7)
    n_exp, n_test = 1000, 500

    def pattern_counts(size: tuple[int, ...]) -> np.ndarray:
        # weak, ceiling, w2s true accuracies per seed; the gap (0.2) is > 6 SD from 0
        acc = np.stack([rng.normal(m, 0.01, size) for m in (0.60, 0.80, 0.68)], axis=-1)
        bits = np.array([[(p >> 2) & 1, (p >> 1) & 1, p & 1] for p in range(8)])
        probs = np.prod(np.where(bits, acc[..., None, :], 1 - acc[..., None, :]), axis=-1)
        return rng.multinomial(n_test, probs)

    def seed_pgr(counts: np.ndarray) -> np.ndarray:
        w, c, s = (
            counts[..., [4, 5, 6, 7]].sum(-1),
            counts[..., [2, 3, 6, 7]].sum(-1),
            counts[..., [1, 3, 5, 7]].sum(-1),
        )
        return (s - w) / (c - w)

    truth = seed_pgr(pattern_counts((200_000,))).mean()  # the mean-of-per-seed-PGR estimand
    cover = {}
    for n in (3, 5, 10):
        counts = pattern_counts((n_exp, n))
        per_seed = seed_pgr(counts)
        lo, hi = _t_bounds(per_seed)
        cover["t", n] = np.mean((lo <= truth) & (truth <= hi))
        boot = grouped_two_level_bootstrap(list(counts), n_resamples=1000, seed=n)
        b = np.array([r["pgr"] for r in boot])
        cover["two-level", n] = np.mean((b[:, 0] <= truth) & (truth <= b[:, 1]))
    for (method, n), c in sorted(cover.items()):
        print(f"coverage n={n:>2} finite test sets {method:<10} {c:.3f}")
    assert cover["two-level", 10] > 0.8
    assert all(c > 0.5 for c in cover.values())
    assert cover["t", 10] > 0.9


# --- the gap and its noise ---------------------------------------------------------------------


def test_paired_gap_se_by_hand():
    weak = np.array([1, 1, 0, 0, 1])
    ceiling = np.array([1, 0, 1, 1, 1])
    # c − w = 0, −1, 1, 1, 0: mean 0.2, sample variance 2.8 / 4 = 0.7
    assert paired_gap_se(weak, ceiling) == pytest.approx(math.sqrt(0.7 / 5))
    counts = joint_pattern_counts(weak, ceiling, np.zeros(5, int))
    assert paired_gap_se_counts(counts) == pytest.approx(math.sqrt(0.7 / 5))
    assert math.isnan(paired_gap_se([1], [0]))


def _correct(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """n examples, exactly k of them right, at random positions."""
    out = np.zeros(n, bool)
    out[rng.permutation(n)[:k]] = True
    return out


def test_tiny_gap_flags_a_gap_within_noise():
    rng = np.random.default_rng(0)
    weak = _correct(1000, 510, rng)
    # hyperbaton-like: ceiling 0.525 vs weak 0.510 on 1,000 examples
    ceiling = _correct(1000, 525, rng)
    se = paired_gap_se(weak, ceiling)
    assert 0.015 < 2 * se  # about 0.022 per SE
    assert tiny_gap(0.015, se)
    strong = _correct(1000, 660, rng)  # a 15-point gap
    assert not tiny_gap(0.15, paired_gap_se(weak, strong))
    assert tiny_gap(0.0, 0.001) and tiny_gap(-0.1, float("nan")) and tiny_gap(float("nan"), 0.01)
    assert not tiny_gap(0.015, float("nan"))  # no SE: only the eps rule
    assert tiny_gap(0.015, float("nan"), eps=0.02)
    assert not tiny_gap(0.015, se, k=0.0)  # k = 0 turns the SE rule off


def test_describe_interval_says_wide_below_five_seeds():
    text = describe_interval("t", 3, interval=(0.027, 0.579))
    assert text == "95% Student-t interval [0.027, 0.579] over 3 seeds (wide: fewer than 5 seeds)"
    assert "wide" not in describe_interval("t", 5)
    assert "too narrow" in describe_interval("seeds", 3)
    assert "test examples" in describe_interval("examples", 1)
    with pytest.raises(ValueError):
        describe_interval("bogus", 3)


# --- two-level bootstrap -----------------------------------------------------------------------


def _seeds(rng, n=300, accs=((0.6, 0.85, 0.7), (0.62, 0.82, 0.7), (0.58, 0.84, 0.72))):
    out = []
    for aw, ac, as_ in accs:
        weak = rng.random(n) < aw
        ceiling = rng.random(n) < ac
        w2s = np.where(rng.random(n) < 0.5, weak, rng.random(n) < as_)  # correlated with weak
        out.append((weak, ceiling, w2s))
    return out


def test_two_level_bootstrap_matches_brute_force_resampling():
    rng = np.random.default_rng(3)
    seeds = _seeds(rng)
    weak, ceiling, w2s = (np.stack([s[k] for s in seeds]) for k in range(3))  # [S, n]
    res = two_level_bootstrap(list(weak), list(ceiling), list(w2s), n_resamples=4000, seed=1)
    assert res["n_seeds"] == 3 and "two-level" in res["method"] and res["pgr_undefined"] == 0
    # brute force: seeds with replacement, then each drawn seed's examples with replacement
    B, S, n = 4000, 3, weak.shape[1]
    idx = rng.integers(0, S, (B, S))
    ex = rng.integers(0, n, (B, S, n))
    aw, ac, as_ = (x[idx[..., None], ex].mean(-1) for x in (weak, ceiling, w2s))  # [B, S]
    gap = ac - aw
    brute_pgr = np.nanmean(np.where(gap > 0, (as_ - aw) / np.where(gap > 0, gap, 1), np.nan), 1)
    for name, dist, tol in (
        ("acc_weak", aw.mean(1), 0.005),
        ("acc_ceiling", ac.mean(1), 0.005),
        ("acc_w2s", as_.mean(1), 0.005),
        ("pgr", brute_pgr, 0.03),
    ):
        lo, hi = np.percentile(dist, [2.5, 97.5])
        assert res[name][0] == pytest.approx(lo, abs=tol), name
        assert res[name][1] == pytest.approx(hi, abs=tol), name
    # headline inside its interval; deterministic; grouped calls give the same numbers
    point = np.mean([(s.mean() - w.mean()) / (c.mean() - w.mean()) for w, c, s in seeds])
    assert res["pgr"][0] < point < res["pgr"][1]
    again = two_level_bootstrap(list(weak), list(ceiling), list(w2s), n_resamples=4000, seed=1)
    assert again == res
    counts = np.stack([joint_pattern_counts(*s) for s in seeds])
    other = counts[:2] + 5
    grouped = grouped_two_level_bootstrap([other, counts], n_resamples=4000, seed=1)
    assert grouped[1] == two_level_bootstrap_counts(counts, n_resamples=4000, seed=1) == res


def test_two_level_bootstrap_one_seed_is_the_example_bootstrap_and_keep_drops_seeds():
    rng = np.random.default_rng(4)
    seeds = _seeds(rng, n=400)
    counts = np.stack([joint_pattern_counts(*s) for s in seeds])
    one = two_level_bootstrap_counts(counts[:1], n_resamples=4000)
    lo, hi, _ = pgr_example_bootstrap(counts[0], n_resamples=4000)
    assert one["pgr"] == pytest.approx((lo, hi), abs=0.04)
    # a seed left out by `keep` (a tiny gap) no longer moves PGR; accuracies still use it
    wild = np.array([0, 0, 0, 0, 0, 0, 200, 200])  # weak = ceiling = 1, w2s 0.5: gap 0
    wild[[2, 5]] = 4, 3  # a tiny positive gap
    full = np.vstack([counts, wild])
    kept = two_level_bootstrap_counts(full, keep=np.array([1, 1, 1, 0], bool), n_resamples=2000)
    free = two_level_bootstrap_counts(full, n_resamples=2000)
    assert kept["pgr"][1] - kept["pgr"][0] < 0.5 * (free["pgr"][1] - free["pgr"][0])
    assert kept["acc_weak"] == free["acc_weak"]
    none = two_level_bootstrap_counts(full, keep=np.zeros(4, bool), n_resamples=500)
    assert all(math.isnan(x) for x in none["pgr"]) and none["pgr_undefined"] == 1.0


# --- the CLI summary ---------------------------------------------------------------------------

# (weak, ceiling, w2s) correct out of 1,000: PGR 0.179, 0.333, 0.396, and a 1.5-point gap
SEEDS = {0: (600, 790, 634), 1: (620, 770, 670), 2: (610, 749, 665), 3: (510, 525, 600)}
N_TEST = 1000


def _frame(ids, labels, correct, weak_soft=None) -> pd.DataFrame:
    pred = np.where(correct, labels, 1 - labels)
    probs = np.full((len(ids), 2), 0.2)
    probs[np.arange(len(ids)), pred] = 0.8
    return pd.DataFrame(
        {
            "id": ids,
            "split": "test",
            "label": labels,
            "probs": list(probs),
            "weak_soft": list(weak_soft) if weak_soft is not None else None,
        }
    )


def _store(tmp_path, seeds=SEEDS, soft_for=(0, 1, 2)) -> tuple[pd.DataFrame, RunStore]:
    """Runs for each seed; the w2s run records the weak test probabilities as ``weak_soft`` for
    the seeds in ``soft_for`` (the others fall back to the weak run's own predictions)."""
    store = RunStore(tmp_path)
    rng = np.random.default_rng(11)
    rows = []
    for seed, (kw, kc, ks) in seeds.items():
        ids = [f"ex{i}" for i in range(N_TEST)]
        labels = rng.integers(0, 2, N_TEST)
        frames = {
            kind: _frame(ids, labels, _correct(N_TEST, k, rng))
            for kind, k in (("weak", kw), ("ceiling", kc), ("w2s", ks))
        }
        if seed in soft_for:
            weak = frames["weak"]
            frames["w2s"]["weak_soft"] = list(np.stack(weak["probs"].to_numpy()))
        frames["w2s"] = frames["w2s"].iloc[::-1]  # other row order: rows align by id
        row = {"seed": seed, "weak": kw / N_TEST, "ceiling": kc / N_TEST, "w2s": ks / N_TEST}
        for kind, df in frames.items():
            rid = f"{kind}-{seed}"
            d = store.start(kind, rid, {"seed": seed}, {"kind": kind, "seed": seed})
            store.finish(d, {"kind": kind, "seed": seed, "accuracy": row[kind]}, df)
            row[f"{kind}_run_id"] = rid
        rows.append(row)
    return pd.DataFrame(rows), store


def _interval(text: str, label: str) -> tuple[float, float]:
    m = re.search(label + r" \[(-?[\d.]+), (-?[\d.]+)\]", text)
    assert m, text
    return float(m.group(1)), float(m.group(2))


def test_summarize_t_interval_bootstrap_and_tiny_gap_flag(tmp_path):
    table, store = _store(tmp_path)
    text = summarize(table, store, n_resamples=2000)
    print(text)
    per_seed = [(s - w) / (c - w) for w, c, s in list(SEEDS.values())[:3]]
    assert [round(p, 3) for p in per_seed] == [0.179, 0.333, 0.396]
    assert f"PGR = {np.mean(per_seed):.3f} (mean of 3 seeds)" in text
    lo, hi = _interval(text, "95% Student-t interval")
    assert all(lo < p < hi for p in per_seed)
    assert "over 3 seeds (wide: fewer than 5 seeds)" in text
    assert (lo, hi) == pytest.approx(t_interval(per_seed), abs=6e-4)
    blo, bhi = _interval(text, "PGR 95%")
    assert "two-level bootstrap (seeds, then test examples; 2000 resamples)" in text
    assert blo < np.mean(per_seed) < bhi
    flag = next(line for line in text.splitlines() if line.startswith("† seed 3"))
    assert "ceiling − weak = 0.015 < 2 SE" in flag and "PGR left out" in flag
    mean_line = next(line for line in text.splitlines() if line.lstrip().startswith("mean"))
    assert mean_line.split()[-1] == f"{np.mean(per_seed):.3f}"  # seed 3's PGR of 6 left out
    seed3 = next(line for line in text.splitlines() if line.split()[0] == "3")
    assert "†" in seed3
    assert len([line for line in text.splitlines() if "†" in line]) == 2  # its row and its note


def test_summarize_degrades_without_run_ids_or_predictions(tmp_path):
    table, store = _store(tmp_path, seeds={k: SEEDS[k] for k in (0, 1, 2)})
    per_seed = [(s - w) / (c - w) for w, c, s in list(SEEDS.values())[:3]]
    for t, s in ((table.drop(columns=["w2s_run_id"]), store), (table, None)):
        text = summarize(t, s)
        assert "95% Student-t interval" in text and "over 3 seeds" in text
        assert "two-level" not in text and "per-seed accuracies only" in text
        lo, hi = _interval(text, "95% Student-t interval")
        assert all(lo < p < hi for p in per_seed)
    (tmp_path / "runs" / "ceiling" / "ceiling-1" / "predictions.parquet").unlink()
    assert "per-seed accuracies only" in summarize(table, store)
    bad = table.assign(ceiling=[0.79, 0.60, 0.749])  # seed 1: ceiling below weak
    text = summarize(bad, None)
    assert "† seed 1: ceiling − weak = -0.020 ≤ 0: PGR undefined, left out" in text
    assert "(mean of 2 seeds)" in text
    assert summarize(pd.DataFrame({"seed": [0], "weak": [0.6]}), None).split()[0] == "seed"


# --- the analysis table ------------------------------------------------------------------------


def _analysed(root, k=2.0):
    runs, _ = load_runs(root)
    pairs = pair_runs(runs)
    add_prediction_metrics(pairs, PredictionStore())
    flag_tiny_gaps(pairs, k=k)
    return pairs, aggregate_pgr(pairs, n_resamples=2000)


def test_analysis_table_t_interval_by_hand_and_caption(tmp_path):
    root = make_results(tmp_path, seeds=(0, 1, 2), losses=("xent",), n_test=1000)
    pairs, summary = _analysed(root)
    row = summary.iloc[0]
    assert row["ci_method"] == "t" and row["n_seeds"] == 3 and row["n_flagged"] == 0
    per_seed = pairs["pgr"].to_numpy()
    half = 4.302653 * per_seed.std(ddof=1) / math.sqrt(3)
    assert row["pgr_ci_low"] == pytest.approx(per_seed.mean() - half, abs=1e-5)
    assert row["pgr_ci_high"] == pytest.approx(per_seed.mean() + half, abs=1e-5)
    assert row["pgr_boot_low"] < row["pgr_mean"] < row["pgr_boot_high"]
    counts = pairs["pattern_counts"].iloc[0]
    assert pairs["gap_se"].iloc[0] == pytest.approx(paired_gap_se_counts(counts))
    table = main_table(summary, [], eps=0.0, n_resamples=2000)
    assert "95% Student-t interval over 3 seeds (wide: fewer than 5 seeds)" in table.title
    md, tex = render_markdown(table), render_latex(table)
    assert "Student-t interval over 3 seeds" in md.splitlines()[0]
    assert r"\caption{Weak-to-strong results; PGR mean with 95\% Student-t" in tex
    assert "PGR 2-level [95%]" in md


def test_analysis_flags_tiny_gaps_and_leaves_them_out(tmp_path):
    root = make_results(tmp_path, seeds=(0, 1, 2), losses=("xent",), n_test=1000)
    pairs, _ = _analysed(root)
    # a k so large every gap is "within noise", and one that flags exactly the smallest gap
    ratio = pairs["gap"] / pairs["gap_se"]
    k = float(np.sort(ratio)[:2].mean())
    pairs, summary = _analysed(root, k=k)
    row = summary.iloc[0]
    assert row["n_flagged"] == 1 and row["n_seeds"] == 2 and not row["gap_ok"]
    assert pairs["gap_flag"].tolist().count(f"gap < {k:g} SE") == 1
    kept = pairs.loc[pairs["gap_ok"], "pgr"]
    assert row["pgr_mean"] == pytest.approx(kept.mean())
    assert row["acc_weak"] == pytest.approx(pairs["acc_weak"].mean())  # accuracies keep all
    md = render_markdown(main_table(summary, [], eps=0.0, n_resamples=2000, gap_se=k))
    assert "†1/3" in md and "left out of the PGR columns" in md
    _, summary = _analysed(root, k=1e6)
    assert summary.iloc[0]["n_flagged"] == 3 and math.isnan(summary.iloc[0]["pgr_mean"])
