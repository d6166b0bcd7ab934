"""Pairing by recorded run ids, rows split by every varying config key, PGR of an ensemble of
weak supervisors against the supervision actually trained on, and the provenance flag."""

import json

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main
from analysis.pgr import describe_code, pair_runs, pgr, varying_config_keys
from analysis.runs import load_runs
from analysis.synthetic import make_results, simulate_probs, write_run

N = 60


def _labels(rng, n=N):
    return {"test": rng.integers(0, 2, n), "val": rng.integers(0, 2, n)}


def _probs(labels, acc, rng):
    return {k: simulate_probs(v, acc, rng) for k, v in labels.items()}


def _acc(probs, labels):
    return float(np.mean(probs["test"].argmax(1) == labels["test"]))


def _analyse(root, tmp_path, *extra):
    out = tmp_path / "analysis"
    argv = [str(root), "--out", str(out), "--no-plots", "--quiet", "--n-resamples", "500"]
    assert main([*argv, *extra]) == 0
    return out


def test_pairing_uses_recorded_ids_not_a_look_alike(tmp_path):
    """Decoy weak and ceiling runs (same task, model, seed; other train.lr; smaller run ids) must
    not replace the runs the w2s run recorded in weak_runs and ceiling_run."""
    rng = np.random.default_rng(0)
    labels = _labels(rng)
    decoy = {"train.lr": 1e-3}
    write_run(tmp_path, "weak", "a-weak-decoy", "t", 0, labels, _probs(labels, 0.8, rng),
              weak_model="w", weak_params=1, config=decoy)  # fmt: skip
    write_run(tmp_path, "ceiling", "a-ceil-decoy", "t", 0, labels, _probs(labels, 0.6, rng),
              strong_model="s", strong_params=9, config=decoy)  # fmt: skip
    weak_probs, ceil_probs = _probs(labels, 0.6, rng), _probs(labels, 0.9, rng)
    write_run(tmp_path, "weak", "b-weak", "t", 0, labels, weak_probs, weak_model="w",
              weak_params=1)  # fmt: skip
    write_run(tmp_path, "ceiling", "b-ceil", "t", 0, labels, ceil_probs, strong_model="s",
              strong_params=9)  # fmt: skip
    common = dict(weak_model="w", strong_model="s", loss="xent", weak_params=1, strong_params=9)
    w2s_probs = _probs(labels, 0.75, rng)
    ids = {"weak_runs": ["b-weak"], "ceiling_run": "b-ceil"}
    write_run(tmp_path, "w2s", "w2s-ok", "t", 0, labels, w2s_probs, weak_run="b-weak",
              extra=ids, **common)  # fmt: skip
    # a recorded ceiling that is not in the store: unpaired, never the decoy
    gone = {"weak_runs": ["b-weak"], "ceiling_run": "deleted-ceil"}
    write_run(tmp_path, "w2s", "w2s-gone", "t", 0, labels, w2s_probs, weak_run="b-weak",
              extra=gone, **common)  # fmt: skip
    runs, _ = load_runs(tmp_path)
    pairs = pair_runs(runs).set_index("w2s_run")
    ok = pairs.loc["w2s-ok"]
    assert ok["weak_run"] == "b-weak" and ok["ceiling_run"] == "b-ceil"
    assert ok["acc_weak"] == pytest.approx(_acc(weak_probs, labels))
    assert ok["acc_ceiling"] == pytest.approx(_acc(ceil_probs, labels))
    assert ok["pgr"] == pytest.approx(
        pgr(_acc(w2s_probs, labels), _acc(weak_probs, labels), _acc(ceil_probs, labels))
    )
    assert "candidates" not in ok["note"] and "matched by" not in ok["note"]
    gone_row = pairs.loc["w2s-gone"]
    assert not gone_row["paired"] and pd.isna(gone_row["ceiling_run"])
    assert "deleted-ceil" in gone_row["note"]


def test_old_runs_without_ids_fall_back_to_key_with_a_note(tmp_path):
    make_results(tmp_path, seeds=(0,), losses=("xent",), n_test=40, n_val=20, n_b=10)
    runs, report = load_runs(tmp_path)
    row = pair_runs(runs).iloc[0]
    assert row["paired"] and "ceiling matched by (task, strong_model, seed)" in row["note"]
    assert any("lack weak_runs or ceiling_run" in w for w in report.warnings)


def _sweep_store(root, seeds=(0, 1, 2)):
    """Weak and ceiling runs per seed; w2s runs of one loss at loss.aux_coef 0.25 and 0.75, with
    a cosmetic key (train.progress) that differs between seeds."""
    rng = np.random.default_rng(3)
    for s in seeds:
        labels = _labels(rng)
        ids = {"weak_runs": [f"weak-s{s}"], "ceiling_run": f"ceil-s{s}"}
        write_run(root, "weak", f"weak-s{s}", "t", s, labels, _probs(labels, 0.6, rng),
                  weak_model="w", weak_params=1)  # fmt: skip
        write_run(root, "ceiling", f"ceil-s{s}", "t", s, labels, _probs(labels, 0.9, rng),
                  strong_model="s", strong_params=9)  # fmt: skip
        for coef in (0.25, 0.75):
            write_run(root, "w2s", f"w2s-{coef}-s{s}", "t", s, labels,
                      _probs(labels, 0.7 + coef / 10, rng), weak_model="w", strong_model="s",
                      loss="logconf", weak_params=1, strong_params=9, weak_run=f"weak-s{s}",
                      config={"loss.aux_coef": coef, "train.progress": s % 2 == 0},
                      extra=ids)  # fmt: skip
    return root


def test_config_sweep_gives_one_row_per_value_not_doubled_seeds(tmp_path):
    root = _sweep_store(tmp_path / "r")
    runs, _ = load_runs(root)
    # train.seed equals the seed (an alias) and train.progress is cosmetic: neither splits rows
    assert varying_config_keys(runs) == ["config.loss.aux_coef"]
    out = _analyse(root, tmp_path)
    table = pd.read_csv(out / "pgr_main.csv")
    assert len(table) == 2 and sorted(table["config.loss.aux_coef"]) == [0.25, 0.75]
    assert list(table["n_runs"]) == [3, 3] and list(table["n_seeds"]) == [3, 3]
    pairs = pd.read_csv(out / "pgr_runs.csv")
    for _, row in table.iterrows():
        per_seed = pairs[pairs["config.loss.aux_coef"] == row["config.loss.aux_coef"]]["pgr"]
        assert row["pgr_mean"] == pytest.approx(per_seed.mean())
    md = (out / "pgr_main.md").read_text()
    assert "loss.aux_coef" in md and "config key that differs" in md
    # the user can still pool a key on purpose
    pooled = _analyse(root, tmp_path / "pooled", "--ignore-key", "loss.aux_coef")
    assert pd.read_csv(pooled / "pgr_main.csv")["n_runs"].tolist() == [6]


def test_ensemble_pgr_uses_the_combined_supervisor_and_lists_members(tmp_path):
    rng = np.random.default_rng(7)
    labels = _labels(rng, 300)  # a gap far above test noise, so the single seed is not flagged
    w1, w2 = _probs(labels, 0.55, rng), _probs(labels, 0.6, rng)
    ceiling = _probs(labels, 0.95, rng)
    combined = {k: (w1[k] + w2[k]) / 2 for k in labels}
    acc1, acc2, acc_comb = _acc(w1, labels), _acc(w2, labels), _acc(combined, labels)
    assert len({acc1, acc2, acc_comb}) == 3  # the test tells the three apart
    write_run(tmp_path, "weak", "weak-1", "t", 0, labels, w1, weak_model="w1", weak_params=1)
    write_run(tmp_path, "weak", "weak-2", "t", 0, labels, w2, weak_model="w2", weak_params=2)
    write_run(tmp_path, "ceiling", "ceil", "t", 0, labels, ceiling, strong_model="s",
              strong_params=9)  # fmt: skip
    members = [
        {"model": "w1", "run_id": "weak-1", "accuracy": acc1},
        {"model": "w2", "run_id": "weak-2", "accuracy": acc2},
    ]
    extra = {
        "weak_runs": ["weak-1", "weak-2"],
        "ceiling_run": "ceil",
        "supervisor_accuracy": acc_comb,
        "supervisor_members": members,
    }
    w2s = _probs(labels, 0.8, rng)
    write_run(tmp_path, "w2s", "ens", "t", 0, labels, w2s, weak_model="w1+w2", strong_model="s",
              loss="xent_ens2_mean", weak_params=1, strong_params=9, weak_run="weak-1",
              weak_soft={"test": combined["test"]}, extra=extra)  # fmt: skip
    out = _analyse(tmp_path, tmp_path)
    row = pd.read_csv(out / "pgr_runs.csv").iloc[0]
    acc_ceiling, acc_w2s = _acc(ceiling, labels), _acc(w2s, labels)
    assert row["acc_weak"] == pytest.approx(acc_comb)
    assert row["pgr"] == pytest.approx(pgr(acc_w2s, acc_comb, acc_ceiling))
    assert row["supervisor"] == "combined (2)"
    assert row["supervisors"] == f"w1 {acc1:.3f}; w2 {acc2:.3f}; combined {acc_comb:.3f}"
    agree = np.mean(combined["test"].argmax(1) == w2s["test"].argmax(1))
    assert row["agreement"] == pytest.approx(agree)  # against the combined labels
    assert json.loads(row["weak_runs"]) == ["weak-1", "weak-2"]
    main_row = pd.read_csv(out / "pgr_main.csv").iloc[0]
    assert main_row["acc_weak"] == pytest.approx(acc_comb)
    assert main_row["ci_method"] == "examples"  # single seed: counts from the combined labels
    sup = pd.read_csv(out / "supervisors.csv").iloc[0]
    assert sup["supervisors"] == row["supervisors"]
    assert "w1 " in (out / "supervisors.md").read_text()
    # the cascade unit is the first weak run, under its own model name
    assert pd.read_csv(out / "cascade_runs.csv")["weak_model"].tolist() == ["w1"]


def test_mixed_git_commits_are_flagged_and_backbone_change_reported(tmp_path):
    rng = np.random.default_rng(11)
    for s in (0, 1):
        labels = _labels(rng)
        prov = {"code_version": "0.1.0", "git_commit": "a" * 40, "git_dirty": False}
        ids = {"weak_runs": [f"weak-s{s}"], "ceiling_run": f"ceil-s{s}"}
        write_run(tmp_path, "weak", f"weak-s{s}", "t", s, labels, _probs(labels, 0.6, rng),
                  weak_model="w", weak_params=1, extra=prov)  # fmt: skip
        write_run(tmp_path, "ceiling", f"ceil-s{s}", "t", s, labels, _probs(labels, 0.9, rng),
                  strong_model="s", strong_params=9, extra=prov)  # fmt: skip
        for loss in ("xent", "logconf"):
            commit = "b" * 40 if (loss == "xent" and s == 1) else "a" * 40
            write_run(tmp_path, "w2s", f"{loss}-s{s}", "t", s, labels, _probs(labels, 0.75, rng),
                      weak_model="w", strong_model="s", loss=loss, weak_params=1,
                      strong_params=9, weak_run=f"weak-s{s}",
                      extra={**prov, **ids, "git_commit": commit,
                             "backbone_change": 0.1 + 0.2 * s})  # fmt: skip
    out = _analyse(tmp_path, tmp_path)
    table = pd.read_csv(out / "pgr_main.csv").set_index("loss")
    assert table.loc["xent", "code"] == "MIXED (2 commits)"
    assert table.loc["logconf", "code"] == "same"
    assert table.loc["xent", "backbone_change"] == pytest.approx(0.2)  # mean of 0.1 and 0.3
    md = (out / "pgr_main.md").read_text()
    assert "MIXED (2 commits)" in md and "backbone Δ" in md
    runs = pd.read_csv(out / "pgr_runs.csv").set_index("w2s_run")
    assert runs.loc["xent-s1", "code"] == "MIXED (2 commits)"  # its partners are on commit a
    assert runs.loc["xent-s0", "code"] == "same"
    assert runs.loc["xent-s1", "backbone_change"] == pytest.approx(0.3)


def test_describe_code():
    def e(i, version=None, commit=None, dirty=None):
        return {"run_id": i, "code_version": version, "git_commit": commit, "git_dirty": dirty}

    assert describe_code([e("a"), e("b")]) == "unknown"
    assert describe_code([e("a", "1", "c1"), e("b", "1", "c1")]) == "same"
    assert describe_code([e("a", "1", "c1", True), e("b", "1", "c1")]) == "same (dirty)"
    assert describe_code([e("a", "1"), e("b", "2")]) == "MIXED (2 versions)"
    # a run without provenance was written by older code than the recorded ones
    assert describe_code([e("a", "1", "c1"), e("b")]) == "MIXED (1 unrecorded)"
    assert describe_code([e("a", "1", "c1"), e("a", "1", "c1")]) == "same"  # deduplicated by id


def test_diagnostic_flags_reach_the_runs_and_the_main_table(tmp_path):
    """A w2s run flagged as collapsed and a weak run flagged near-uniform are counted per group."""
    rng = np.random.default_rng(3)
    common = dict(weak_model="w", strong_model="s", loss="xent", weak_params=1, strong_params=9)
    for seed in range(3):
        labels = _labels(rng, 300)
        weak_flags = {"flags": ["near_uniform_predictions"]} if seed == 0 else {"flags": []}
        write_run(tmp_path, "weak", f"weak{seed}", "t", seed, labels, _probs(labels, 0.6, rng),
                  weak_model="w", weak_params=1, extra=weak_flags)  # fmt: skip
        write_run(tmp_path, "ceiling", f"ceil{seed}", "t", seed, labels,
                  _probs(labels, 0.9, rng), strong_model="s", strong_params=9)  # fmt: skip
        ids = {"weak_runs": [f"weak{seed}"], "ceiling_run": f"ceil{seed}",
               "flags": ["collapsed"] if seed < 2 else []}
        write_run(tmp_path, "w2s", f"w2s{seed}", "t", seed, labels, _probs(labels, 0.7, rng),
                  weak_run=f"weak{seed}", extra=ids, **common)  # fmt: skip
    out = _analyse(tmp_path, tmp_path)
    per_run = pd.read_csv(out / "pgr_runs.csv").set_index("seed")
    assert per_run.loc[0, "flags"] == "w2s:collapsed weak:near_uniform_predictions"
    assert per_run.loc[1, "flags"] == "w2s:collapsed" and pd.isna(per_run.loc[2, "flags"])
    main_md = (out / "pgr_main.md").read_text()
    assert "w2s:collapsed 2/3; weak:near_uniform_predictions 1/3" in main_md
    assert "collapsed to one class" in main_md
