"""Statistics across tasks: per-task PGR and the mean/median across tasks with a hierarchical
bootstrap (tasks, then seeds), undefined tasks shown and counted but not aggregated, and paired
loss differences only over w2s runs that used the same weak and ceiling runs.

The stores are built with exact accuracies: on 100 test examples the weak run is right on the
first W, the ceiling on the first C and the w2s run on the first X, so every PGR is known by hand.
"""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.pgr import add_prediction_metrics, aggregate_pgr, flag_tiny_gaps, pair_runs
from analysis.predictions import PredictionStore
from analysis.runs import load_runs
from analysis.stats import hierarchical_bootstrap, t_interval
from analysis.synthetic import write_run
from analysis.tables import loss_compare_table, render_latex, render_markdown, task_pgr_table
from analysis.tasks import compare_losses, paired_seeds, task_statistics

N = 100
B = 2000
# per task: (W, C) correct counts of weak and ceiling, then per loss the w2s correct counts per seed
SPEC = {
    "t2": ((60, 80), {"xent": [70, 80], "logconf": [75, 80]}),  # gap 20
    "t3": ((50, 90), {"xent": [70, 80, 60], "logconf": [60, 70, 70]}),  # gap 40
    "t5": ((55, 95), {"xent": [95, 95, 85, 75, 75], "logconf": [95, 95, 95, 85, 75]}),  # gap 40
    "tz": ((70, 70), {"xent": [70, 70, 70], "logconf": [72, 72, 72]}),  # no gap: undefined
}
# per-seed PGR = (X − W)/(C − W), by hand
PGR = {
    "t2": {"xent": [0.5, 1.0], "logconf": [0.75, 1.0]},
    "t3": {"xent": [0.5, 0.75, 0.25], "logconf": [0.25, 0.5, 0.5]},
    "t5": {"xent": [1.0, 1.0, 0.75, 0.5, 0.5], "logconf": [1.0, 1.0, 1.0, 0.75, 0.5]},
}
DECOY_C = 80  # t3 seed 2 logconf compared with this ceiling run instead: PGR (70 − 50)/30


def _probs(n_correct: int, labels: np.ndarray) -> np.ndarray:
    """Right on the first ``n_correct`` examples (confidence 0.8), wrong on the rest."""
    pred = np.where(np.arange(len(labels)) < n_correct, labels, 1 - labels)
    probs = np.full((len(labels), 2), 0.2)
    probs[np.arange(len(labels)), pred] = 0.8
    return probs


def _write_store(root, decoy: bool = False, tasks=None):
    labels = {"test": np.arange(N) % 2, "val": np.arange(N) % 2}

    def run(kind, run_id, task, seed, n_correct, **kw):
        probs = {k: _probs(n_correct, v) for k, v in labels.items()}
        write_run(root, kind, run_id, task, seed, labels, probs, **kw)

    for task, ((w, c), losses) in SPEC.items():
        if tasks is not None and task not in tasks:
            continue
        for seed in range(len(losses["xent"])):
            weak_id, ceil_id = f"{task}-weak-s{seed}", f"{task}-ceil-s{seed}"
            run("weak", weak_id, task, seed, w, weak_model="w", weak_params=1e8)
            run("ceiling", ceil_id, task, seed, c, strong_model="s", strong_params=1e9)
            for loss, xs in losses.items():
                ceiling = ceil_id
                if decoy and (task, seed, loss) == ("t3", 2, "logconf"):
                    ceiling = f"{task}-ceil-decoy-s{seed}"
                    run("ceiling", ceiling, task, seed, DECOY_C, strong_model="s",
                        strong_params=1e9, config={"train.lr": 1e-3})  # fmt: skip
                ids = {"weak_runs": [weak_id], "ceiling_run": ceiling}
                run("w2s", f"{task}-w2s-{loss}-s{seed}", task, seed, xs[seed], weak_model="w",
                    strong_model="s", loss=loss, weak_params=1e8, strong_params=1e9,
                    weak_run=weak_id, extra=ids)  # fmt: skip
    return root


def _analyse(root):
    runs, _ = load_runs(root)
    pairs = pair_runs(runs)
    add_prediction_metrics(pairs, PredictionStore())
    flag_tiny_gaps(pairs)
    summary = aggregate_pgr(pairs, n_resamples=B)
    return pairs, summary


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _analyse(_write_store(tmp_path_factory.mktemp("tasks")))


@pytest.fixture(scope="module")
def decoy_store(tmp_path_factory):
    return _analyse(_write_store(tmp_path_factory.mktemp("decoy"), decoy=True))


# --- (a) per-task PGR and the across-task mean/median -------------------------------------------


def test_per_task_pgr_and_undefined_task(store):
    pairs, summary = store
    result = task_statistics(summary, pairs, n_resamples=B)
    tasks = result.tasks.set_index(["variant", "task"])
    for task, losses in PGR.items():
        for loss, values in losses.items():
            row = tasks.loc[(loss, task)]
            assert row["defined"] and row["n_seeds"] == len(values) and row["left_out"] == ""
            assert row["pgr_mean"] == pytest.approx(np.mean(values))
            assert json.loads(row["seed_pgrs"]) == pytest.approx(values)
            w, c = SPEC[task][0]
            assert row["acc_weak"] == pytest.approx(w / N)
            assert row["acc_ceiling"] == pytest.approx(c / N)
            assert row["acc_w2s"] == pytest.approx(np.mean(SPEC[task][1][loss]) / N)
    # the per-task interval is the main table's Student-t over seeds: t(0.975, 2) = 4.302653
    t3 = tasks.loc[("xent", "t3")]
    half = 4.302652729911275 * 0.25 / np.sqrt(3)
    assert (t3["pgr_ci_low"], t3["pgr_ci_high"]) == pytest.approx((0.5 - half, 0.5 + half))
    assert t3["ci_method"] == "t"
    # every seed of tz has acc_ceiling = acc_weak: shown with the reason, not dropped
    for loss in ("xent", "logconf"):
        tz = tasks.loc[(loss, "tz")]
        assert not tz["defined"] and tz["n_seeds"] == 0 and np.isnan(tz["pgr_mean"])
        assert tz["left_out"] == "undefined: 3/3 seeds tiny gap"


def test_across_task_mean_median_leave_out_undefined(store):
    pairs, summary = store
    result = task_statistics(summary, pairs, n_resamples=B)
    across = result.across.set_index("variant")
    task_means = {loss: [np.mean(PGR[t][loss]) for t in ("t2", "t3", "t5")] for loss in PGR["t2"]}
    # xent: 0.75, 0.5, 0.75; logconf: 0.875, 0.41667, 0.85
    assert task_means["xent"] == pytest.approx([0.75, 0.5, 0.75])
    for loss, means in task_means.items():
        row = across.loc[loss]
        assert row["pgr_mean"] == pytest.approx(np.mean(means))
        assert row["pgr_median"] == pytest.approx(np.median(means))
        assert (row["n_tasks"], row["n_tasks_used"], row["n_tasks_undefined"]) == (4, 3, 1)
        assert row["tasks_undefined"] == "tz"
        assert row["seeds_per_task"] == "t2 2, t3 3, t5 5"
        assert row["n_pgr_positive"] == 3
        # the interval resamples the defined tasks' per-seed PGRs only (tz is not a value)
        expected = hierarchical_bootstrap([np.array(PGR[t][loss]) for t in ("t2", "t3", "t5")], B)
        assert (row["pgr_mean_low"], row["pgr_mean_high"]) == pytest.approx(expected["mean_ci"])
        assert (row["pgr_median_low"], row["pgr_median_high"]) == pytest.approx(
            expected["median_ci"]
        )
        assert row["pgr_mean_low"] <= row["pgr_mean"] <= row["pgr_mean_high"]
    assert across.loc["xent", "pgr_mean"] == pytest.approx(2 / 3)
    assert across.loc["xent", "pgr_median"] == pytest.approx(0.75)


def test_task_table_shows_undefined_and_names_method(store):
    pairs, summary = store
    table = task_pgr_table(task_statistics(summary, pairs, n_resamples=B))
    md = render_markdown(table)
    assert "undefined: 3/3 seeds tiny gap" in md
    assert "across tasks: mean" in md and "across tasks: median" in md
    assert "hierarchical bootstrap" in table.title and "Student-t" in table.title
    assert f"({B:,} resamples, seed 0)" in md
    assert "3 tasks used (seeds per task: t2 2, t3 3, t5 5), 1 left out (undefined: tz)" in md
    assert "Fewer than 5 tasks" in md
    across = table.display[table.display["task"] == "across tasks: mean"].set_index("loss")
    assert across.loc["xent", "seeds"] == "3 tasks"
    assert across.loc["xent", "PGR mean [95% CI]"].startswith("0.667 [")
    tex = render_latex(table)
    assert tex.count(r"\midrule") == 2  # the header rule and the one before the across block
    data = table.data
    assert set(data["row"]) == {"task", "across"} and len(data) == 8 + 2


# --- (b) the hierarchical bootstrap --------------------------------------------------------------


def test_equal_seeds_reduce_to_a_bootstrap_over_tasks():
    """With every seed of a task equal, resampling seeds changes nothing: the result is the plain
    bootstrap over tasks, drawn first from default_rng(seed) as integers(0, T, (B, T))."""
    values = np.array([0.1, 0.5, 0.9])
    tasks = [np.full(2, 0.1), np.full(3, 0.5), np.full(5, 0.9)]
    result = hierarchical_bootstrap(tasks, n_resamples=10_000, seed=0)
    rng = np.random.default_rng(0)
    drawn = values[rng.integers(0, 3, size=(10_000, 3))]
    assert result["mean_ci"] == pytest.approx(tuple(np.percentile(drawn.mean(1), [2.5, 97.5])))
    assert result["median_ci"] == pytest.approx(
        tuple(np.percentile(np.median(drawn, 1), [2.5, 97.5]))
    )
    assert result["mean"] == pytest.approx(0.5) and result["median"] == pytest.approx(0.5)
    assert result["n_tasks"] == 3 and result["n_seeds"] == [2, 3, 5]
    assert result["n_resamples"] == 10_000  # the default, also
    assert hierarchical_bootstrap(tasks) == result


def test_same_pgr_everywhere_gives_a_zero_width_interval():
    result = hierarchical_bootstrap([np.full(2, 0.4), np.full(3, 0.4), np.full(5, 0.4)])
    for key in ("mean_ci", "median_ci"):
        lo, hi = result[key]
        assert lo == pytest.approx(0.4, abs=1e-12) and hi - lo == pytest.approx(0.0, abs=1e-12)


def test_seed_level_is_resampled_by_hand():
    """Tasks A = [0, 1] (2 seeds) and B = [1, 1]. Drawn tasks AA, AB, BA, BB (1/4 each); A's
    resampled mean is 0, 0.5, 1 w.p. 1/4, 1/2, 1/4. The mean over the two drawn tasks is then 0
    w.p. 1/64, 0.25 w.p. 1/16, ..., 1 w.p. 25/64: the 2.5 % and 97.5 % points are 0.25 and 1. A
    bootstrap over tasks alone (A = 0.5) would give [0.5, 1]; with 2 tasks the median is the
    mean."""
    result = hierarchical_bootstrap([np.array([0.0, 1.0]), np.array([1.0, 1.0])])
    assert result["mean"] == pytest.approx(0.75)
    assert result["mean_ci"] == pytest.approx((0.25, 1.0))
    assert result["median_ci"] == pytest.approx((0.25, 1.0))
    one = hierarchical_bootstrap([np.array([0.0, 1.0])])  # one task: its seeds only
    assert one["mean_ci"] == pytest.approx((0.0, 1.0))


def test_nan_seeds_and_empty_tasks_are_not_values():
    clean = hierarchical_bootstrap([np.array([0.2, 0.6]), np.array([0.5])], n_resamples=500)
    dirty = hierarchical_bootstrap(
        [np.array([0.2, np.nan, 0.6]), np.array([np.nan]), np.array([0.5])], n_resamples=500
    )
    assert dirty == clean and dirty["n_tasks"] == 2


# --- (c) paired loss differences -----------------------------------------------------------------


def test_paired_difference_excludes_a_seed_with_another_ceiling(decoy_store):
    pairs, summary = decoy_store
    decoy = pairs.set_index("w2s_run").loc["t3-w2s-logconf-s2"]
    assert decoy["ceiling_run"] == "t3-ceil-decoy-s2"
    assert decoy["pgr"] == pytest.approx(20 / 30)  # its own PGR is against the decoy ceiling
    result = compare_losses(pairs, n_resamples=B)
    assert set(result.tasks["comparison"]) == {"logconf − xent"}  # alphabetical: A − B
    tasks = result.tasks.set_index("task")
    # per seed logconf − xent, by hand; t3 seed 2 is out (logconf used the decoy ceiling)
    diffs = {"t2": [0.25, 0.0], "t3": [-0.25, -0.25], "t5": [0.0, 0.0, 0.25, 0.25, 0.0]}
    for task, d in diffs.items():
        row = tasks.loc[task]
        assert json.loads(row["seed_diffs"]) == pytest.approx(d)
        assert row["n_pairs"] == len(d) and row["diff_mean"] == pytest.approx(np.mean(d))
        assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(t_interval(d))
    assert tasks.loc["t3", "n_other_runs"] == 1
    assert json.loads(tasks.loc["t3", "seeds"]) == [0, 1]
    assert tasks.loc["t3", "excluded"] == "1/3 other weak/ceiling run"
    assert tasks.loc["t3", "pgr_a"] == pytest.approx(0.375)  # logconf over the paired seeds
    assert not tasks.loc["tz", "defined"] and tasks.loc["tz", "n_undefined"] == 3
    assert tasks.loc["t2", "n_other_runs"] == 0 and tasks.loc["t2", "excluded"] == ""
    across = result.across.iloc[0]
    means = [np.mean(d) for d in diffs.values()]  # 0.125, −0.25, 0.1
    assert across["diff_mean"] == pytest.approx(np.mean(means))
    assert across["diff_median"] == pytest.approx(0.1)
    assert (across["n_tasks_used"], across["n_tasks_undefined"]) == (3, 1)
    assert (across["n_positive"], across["n_negative"]) == (2, 1)
    assert across["share_positive"] == pytest.approx(2 / 3)
    # t3: both paired differences are −0.25, a zero-width interval below 0; t2, t5 include 0
    assert (across["n_ci_positive"], across["n_ci_negative"], across["n_with_ci"]) == (0, 1, 3)
    expected = hierarchical_bootstrap([np.array(d) for d in diffs.values()], B)
    assert (across["diff_mean_low"], across["diff_mean_high"]) == pytest.approx(expected["mean_ci"])
    md = render_markdown(loss_compare_table(result))
    assert "1/3 other weak/ceiling run" in md and "2/3 (67%)" in md
    assert "0 above, 1 below (of 3 with ≥ 2 seeds)" in md
    assert "undefined: 3/3 tiny gap" in md


def test_compare_picks_the_named_direction(decoy_store):
    pairs, _ = decoy_store
    result = compare_losses(pairs, compare=("xent", "logconf"), n_resamples=B)
    assert list(result.across["comparison"]) == ["xent − logconf"]
    t2 = result.tasks.set_index("task").loc["t2"]
    assert json.loads(t2["seed_diffs"]) == pytest.approx([-0.25, 0.0])
    missing = compare_losses(pairs, compare=("xent", "nope"), n_resamples=B)
    assert missing.tasks.empty and "no loss named nope" in missing.warnings[0]


def test_paired_seeds_counts_every_reason():
    def row(seed, ceiling="c", weak='["w"]', paired=True, gap_ok=True, pgr=0.5):
        return dict(seed=seed, weak_runs=weak, ceiling_run=ceiling, paired=paired,
                    gap_ok=gap_ok, pgr=pgr)  # fmt: skip

    a = [row(0, pgr=0.9), row(1), row(2), row(3, paired=False), row(4), row(4), row(5)]
    b = [row(0, pgr=0.4), row(1, weak='["w2"]'), row(2, gap_ok=False), row(3), row(4), row(6)]
    result = paired_seeds(a, b)
    assert result["seeds"] == [0]
    assert result["pgr_a"] - result["pgr_b"] == pytest.approx([0.5])
    counts = {k: result[k] for k in ("other_runs", "undefined", "unpaired", "several")}
    assert counts == {"other_runs": 1, "undefined": 1, "unpaired": 1, "several": 1}
    assert (result["only_a"], result["only_b"]) == (1, 1)


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_writes_task_tables(tmp_path):
    root = _write_store(tmp_path / "results", decoy=True)
    out = tmp_path / "analysis"
    assert (
        main([str(root), "--out", str(out), "--no-plots", "--quiet", "--n-resamples", "500"]) == 0
    )
    for name in ("pgr_tasks", "loss_compare"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    tasks = pd.read_csv(out / "pgr_tasks.csv")
    rows = tasks[tasks["row"] == "task"].set_index(["variant", "task"])
    assert rows.loc[("xent", "t5"), "pgr_mean"] == pytest.approx(0.75)
    assert rows.loc[("xent", "tz"), "left_out"] == "undefined: 3/3 seeds tiny gap"
    assert rows.loc[("logconf", "t3"), "pgr_mean"] == pytest.approx((0.25 + 0.5 + 2 / 3) / 3)
    across = tasks[tasks["row"] == "across"].set_index("variant")
    assert across.loc["xent", "n_tasks_undefined"] == 1
    compare = pd.read_csv(out / "loss_compare.csv")
    assert compare.loc[compare["row"] == "across", "n_positive"].tolist() == [2]


def test_cli_skips_task_tables_for_one_task(tmp_path, capsys):
    root = _write_store(tmp_path / "results", tasks=("t3",))
    out = tmp_path / "analysis"
    assert (
        main([str(root), "--out", str(out), "--no-plots", "--quiet", "--n-resamples", "200"]) == 0
    )
    assert not (out / "pgr_tasks.md").exists() and not (out / "loss_compare.md").exists()
    assert "need at least 2" in capsys.readouterr().err


def test_figures(store, tmp_path):
    from analysis import plots

    pairs, summary = store
    paths = plots.plot_pgr_tasks(task_statistics(summary, pairs, n_resamples=B), tmp_path)
    paths += plots.plot_loss_compare(compare_losses(pairs, n_resamples=B), tmp_path)
    names = {p.name for p in paths}
    assert names == {
        f"{stem}__w__s.{ext}" for stem in ("pgr_tasks", "loss_compare") for ext in ("png", "pdf")
    }
    assert all(p.stat().st_size > 0 for p in paths)
