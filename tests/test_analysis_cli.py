"""End to end: ``w2s-analyze`` on a synthetic results directory writes every table and plot, and
its numbers equal PGR computed by hand from the runs' metrics.json files."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.synthetic import make_results
from analysis.tables import latex_escape

SEEDS = (0, 1, 2)
LOSSES = ("xent", "logconf")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    # 1,000 test examples: every seed's ceiling − weak gap is well above 2 SE of its noise
    root = make_results(tmp_path_factory.mktemp("results"), seeds=SEEDS, losses=LOSSES, n_test=1000)
    assert main([str(root), "--n-resamples", "2000", "--quiet"]) == 0
    return root, root / "analysis"


def _metrics(root: Path) -> dict[str, dict]:
    return {
        m["run_id"]: m
        for m in (json.loads(p.read_text()) for p in root.glob("runs/*/*/metrics.json"))
    }


def test_writes_tables_report_and_plots(analysed):
    _, out = analysed
    for name in ("pgr_main", "pgr_by_loss", "cascade", "calibration"):
        for ext in ("md", "tex", "csv"):
            assert (out / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    for name in ("skipped.md", "pgr_runs.csv", "deferral_curves.csv", "reliability.csv"):
        assert (out / name).exists()
    plots = {p.name for p in (out / "plots").iterdir()}
    for stem in (
        "accuracy_vs_size__sciq__xent",
        "accuracy_vs_size__sciq__logconf",
        "pgr_vs_size__sciq__gpt2",
        "deferral__sciq__gpt2__gpt2-large",
        "reliability__sciq__gpt2",
    ):
        assert {f"{stem}.png", f"{stem}.pdf"} <= plots, stem
    tex = (out / "pgr_main.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"acc\_w2s" in tex and "acc_w2s" not in tex.replace(r"acc\_w2s", "")


def test_csv_pgr_equals_hand_computed(analysed):
    root, out = analysed
    metrics = _metrics(root)
    table = pd.read_csv(out / "pgr_main.csv").set_index("loss")
    assert sorted(table.index) == sorted(LOSSES)
    for loss in LOSSES:
        per_seed, acc = [], {"weak": [], "ceiling": [], "w2s": []}
        for s in SEEDS:
            weak = metrics[f"sciq-weak-gpt2-s{s}"]["accuracy"]
            ceiling = metrics[f"sciq-ceiling-gpt2-large-s{s}"]["accuracy"]
            w2s = metrics[f"sciq-w2s-gpt2-gpt2-large-{loss}-s{s}"]["accuracy"]
            per_seed.append((w2s - weak) / (ceiling - weak))
            for k, v in (("weak", weak), ("ceiling", ceiling), ("w2s", w2s)):
                acc[k].append(v)
        row = table.loc[loss]
        assert row["n_seeds"] == 3 and row["n_flagged"] == 0 and row["ci_method"] == "t"
        assert row["pgr_mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert row["pgr_median"] == pytest.approx(np.median(per_seed), abs=1e-12)
        assert row["acc_weak"] == pytest.approx(np.mean(acc["weak"]))
        assert row["acc_ceiling"] == pytest.approx(np.mean(acc["ceiling"]))
        assert row["acc_w2s"] == pytest.approx(np.mean(acc["w2s"]))
        half = 4.302653 * np.std(per_seed, ddof=1) / np.sqrt(3)  # t(0.975, 2)·sd/√n
        assert row["pgr_ci_low"] == pytest.approx(np.mean(per_seed) - half, abs=1e-5)
        assert row["pgr_ci_high"] == pytest.approx(np.mean(per_seed) + half, abs=1e-5)
        assert row["pgr_boot_low"] < row["pgr_mean"] < row["pgr_boot_high"]
        assert 0 < row["agreement"] < 1
    burns = pd.read_csv(out / "pgr_by_loss.csv").set_index("loss")
    assert burns.loc["xent", "n:sciq"] == 3
    md = (out / "pgr_main.md").read_text()
    assert "mean over seeds" in md and "Student-t" in md
    assert "95% Student-t interval over 3 seeds (wide: fewer than 5 seeds)" in md.splitlines()[0]


def test_cascade_csv_matches_curve_of_the_predictions(analysed):
    _, out = analysed
    cascade = pd.read_csv(out / "cascade.csv").iloc[0]
    assert cascade["n_seeds"] == 3
    assert cascade["audc_random"] == pytest.approx(
        (cascade["acc_weak"] + cascade["acc_strong"]) / 2
    )
    assert cascade["audc_random"] <= cascade["audc"] <= cascade["audc_oracle"]
    assert 0 < cascade["cpt20"] <= cascade["cpt50"] <= cascade["cpt80"] <= 1  # RouteLLM's CPT
    assert cascade["budget_test_share"] <= 0.5 + 0.15  # chosen on val for half the strong calls


def test_single_seed_single_strong_and_group_by(tmp_path):
    root = make_results(tmp_path / "r", seeds=(0,), losses=("xent",), n_test=300)
    out = tmp_path / "a"
    assert (
        main(
            [
                str(root),
                "--out",
                str(out),
                "--group-by",
                "train.lr",
                "--quiet",
                "--n-resamples",
                "1000",
            ]
        )
        == 0
    )
    row = pd.read_csv(out / "pgr_main.csv").iloc[0]
    assert row["n_seeds"] == 1 and row["ci_method"] == "examples"
    assert row["pgr_ci_low"] < row["pgr_mean"] < row["pgr_ci_high"]
    assert "config.train.lr" in pd.read_csv(out / "pgr_main.csv").columns
    assert "train.lr" in (out / "pgr_main.md").read_text()
    assert len(list((out / "plots").glob("*.png"))) == 4


def test_gap_eps_flags_rows_and_costs_are_used(tmp_path):
    root = make_results(tmp_path / "r", seeds=(0, 1), losses=("xent",), n_test=100)
    out = tmp_path / "a"
    argv = [str(root), "--out", str(out), "--no-plots", "--quiet", "--gap-eps", "0.99"]
    assert main([*argv, "--cost-weak", "1", "--cost-strong", "4", "--budget", "2"]) == 0
    row = pd.read_csv(out / "pgr_main.csv").iloc[0]
    assert row["n_flagged"] == 2 and not row["gap_ok"] and np.isnan(row["pgr_mean"])
    assert "†2/2" in (out / "pgr_main.md").read_text()
    budgets = pd.read_csv(out / "cascade_budgets.csv")
    assert set(budgets["budget"]) == {1 + 0.5 * 4, 2.0}
    assert (budgets["test_cost"] == 1 + 4 * budgets["test_share"]).all()


def test_latex_escape():
    assert latex_escape("a_b & 50% #1 ≤ τ") == r"a\_b \& 50\% \#1 $\le$ $\tau$"
