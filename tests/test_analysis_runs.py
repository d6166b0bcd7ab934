"""Loading the run store: finished runs load, broken ones are skipped with a reason, never fatal."""

import json

import numpy as np
import pytest

from analysis.cli import main
from analysis.pgr import pair_runs
from analysis.runs import load_predictions, load_runs, resolve_group_keys
from analysis.synthetic import make_results, simulate_probs, write_run


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    """A good weak/ceiling/w2s triple plus one run of every broken kind."""
    root = tmp_path_factory.mktemp("messy")
    make_results(root, seeds=(0,), losses=("xent",), n_test=40, n_val=20, n_b=10)
    rng = np.random.default_rng(0)
    labels = {"test": rng.integers(0, 2, 40)}
    probs = {"test": simulate_probs(labels["test"], 0.7, rng)}

    def run(name, kind="w2s"):
        return write_run(root, kind, name, "sciq", 1, labels, probs, weak_model="gpt2",
                         strong_model="gpt2-large", loss="xent")  # fmt: skip

    def edit(run_dir, **changes):
        meta = json.loads((run_dir / "metrics.json").read_text())
        meta.update(changes)
        (run_dir / "metrics.json").write_text(json.dumps(meta))

    edit(run("failed"), status="failed", error="CUDA out of memory")
    edit(run("running"), status="running")
    truncated = run("truncated")
    text = (truncated / "metrics.json").read_text()
    (truncated / "metrics.json").write_text(text[: len(text) // 2])
    (run("no-predictions") / "predictions.parquet").unlink()
    (run("no-metrics") / "metrics.json").unlink()
    meta_no_acc = run("no-accuracy")
    edit(meta_no_acc, accuracy=None)
    edit(run("bad-kind"), kind="teacher")
    (root / "runs" / "w2s" / "just-created").mkdir()
    (root / "runs" / "zz-copies").mkdir()
    dup = run("dup-a").rename(root / "runs" / "zz-copies" / "dup-a")
    edit(dup, run_id="sciq-weak-gpt2-s0", kind="weak")  # same id as a good run, sorted after it
    (root / "runs" / "w2s" / "list-json").mkdir()
    (root / "runs" / "w2s" / "list-json" / "metrics.json").write_text("[1, 2]")
    (root / "runs" / "w2s" / "list-json" / "predictions.parquet").write_bytes(b"")
    return root


def test_load_runs_skips_and_reports_every_broken_run(messy):
    runs, report = load_runs(messy)
    assert sorted(runs["kind"]) == ["ceiling", "w2s", "weak"]
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in report.skipped}
    assert "status failed: CUDA out of memory" == reasons["failed"]
    assert "running" in reasons["running"]
    assert "invalid metrics.json" in reasons["truncated"]
    assert "missing predictions.parquet" in reasons["no-predictions"]
    assert "no metrics.json" in reasons["no-metrics"]
    assert "no metrics.json" in reasons["just-created"]
    assert "accuracy" in reasons["no-accuracy"]
    assert "unknown kind" in reasons["bad-kind"]
    assert "duplicate run_id" in reasons["dup-a"]
    assert "not a JSON object" in reasons["list-json"]
    assert report.n_found == 3 + len(reasons) and report.n_loaded == 3
    md = report.to_markdown()
    assert all(name in md for name in reasons)


def test_runs_frame_has_metrics_and_config_columns(messy):
    runs, _ = load_runs(messy)
    w2s = runs[runs["kind"] == "w2s"].iloc[0]
    assert w2s["weak_run"] == "sciq-weak-gpt2-s0" and w2s["seed"] == 0
    assert w2s["config.train.lr"] == pytest.approx(1e-4)
    assert resolve_group_keys(runs, ["train.lr", "config.train.seed", "loss"]) == [
        "config.train.lr",
        "config.train.seed",
        "loss",
    ]
    with pytest.raises(KeyError, match="train.lr"):
        resolve_group_keys(runs, ["train.nope"])
    preds = load_predictions(w2s["run_dir"])
    assert set(preds["split"]) == {"b", "val", "test"} and len(preds["probs"].iloc[0]) == 2
    b = preds[preds["split"] == "b"]
    assert b["weak_soft"].notna().all()


def test_cli_survives_broken_runs_and_writes_the_report(messy, tmp_path, capsys):
    assert main([str(messy), "--out", str(tmp_path), "--no-plots", "--n-resamples", "500"]) == 0
    skipped = (tmp_path / "skipped.md").read_text()
    for name in ("failed", "running", "truncated", "no-predictions", "no-metrics"):
        assert f"runs/w2s/{name}`" in skipped
    assert "| sciq" in capsys.readouterr().out


def test_missing_results_dir_is_an_error_not_a_traceback(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--no-plots"]) == 2
    assert "not found" in capsys.readouterr().err


def test_pairing_prefers_weak_run_id_then_key(tmp_path):
    rng = np.random.default_rng(1)
    labels = {"test": rng.integers(0, 2, 30)}

    def probs(acc):
        return {"test": simulate_probs(labels["test"], acc, rng)}

    write_run(tmp_path, "weak", "weak-a", "t", 0, labels, probs(0.6), weak_model="w", weak_params=1)
    write_run(tmp_path, "weak", "weak-b", "t", 0, labels, probs(0.6), weak_model="w", weak_params=1)
    write_run(
        tmp_path, "ceiling", "ceil", "t", 0, labels, probs(0.9), strong_model="s", strong_params=9
    )
    common = dict(weak_model="w", strong_model="s", loss="xent", weak_params=1, strong_params=9)
    write_run(tmp_path, "w2s", "by-id", "t", 0, labels, probs(0.7), weak_run="weak-b", **common)
    write_run(tmp_path, "w2s", "by-key", "t", 0, labels, probs(0.7), **common)
    write_run(tmp_path, "w2s", "orphan", "t", 5, labels, probs(0.7), **common)
    runs, _ = load_runs(tmp_path)
    pairs = pair_runs(runs).set_index("w2s_run")
    assert pairs.loc["by-id", "weak_run"] == "weak-b"
    assert (
        pairs.loc["by-key", "weak_run"] == "weak-a"
        and "2 weak candidates" in pairs.loc["by-key", "note"]
    )
    assert pairs.loc["by-id", "ceiling_run"] == "ceil"
    assert not pairs.loc["orphan", "paired"] and np.isnan(pairs.loc["orphan", "pgr"])
    assert "no weak run" in pairs.loc["orphan", "note"]


def test_tracker_files_below_the_results_are_not_runs(tmp_path):
    make_results(tmp_path, seeds=(0,), losses=("xent",))
    n = len(load_runs(tmp_path)[0])
    online = tmp_path / "tracking" / "wandb" / "run-1" / "files"  # W&B online writes a config.yaml
    online.mkdir(parents=True)
    (online / "config.yaml").write_text("lr: 1\n")
    runs, report = load_runs(tmp_path)
    assert len(runs) == n and report.n_found == n and not report.skipped
