"""weak -> ceiling -> w2s end to end on tiny random BERTs and a local task: contracts, reuse,
one compilation per bucket, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose, tiny_overrides

CONTRACT = {"kind", "task", "weak_model", "strong_model", "loss", "seed", "accuracy", "auroc",
            "n_test", "train_seconds", "examples_per_second", "status"}


def runs(results: Path, kind: str) -> list[Path]:
    return sorted((results / "runs" / kind).glob("*"))


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture
def trainings(monkeypatch):
    """Counts calls of the trainer made by the pipeline."""
    import w2s.pipeline

    calls = []
    real = w2s.pipeline.train_group

    def counting(models, *args, **kwargs):
        calls.extend([kwargs.get("desc")] * len(models))  # one entry per model trained
        return real(models, *args, **kwargs)

    monkeypatch.setattr(w2s.pipeline, "train_group", counting)
    return calls


def run(overrides):
    from w2s.cli import run as cli_run

    return cli_run(compose(overrides))


@pytest.fixture(scope="module")
def finished(tiny_env, tmp_path_factory):
    """One finished experiment shared by the tests that only read it."""
    results = tmp_path_factory.mktemp("results")
    run(tiny_overrides(tiny_env, results))
    return results


def test_end_to_end_writes_the_contract(finished):
    weak, ceiling, w2s = (runs(finished, k) for k in ("weak", "ceiling", "w2s"))
    assert len(weak) == len(ceiling) == len(w2s) == 1
    for d in (weak[0], ceiling[0], w2s[0]):
        m = metrics(d)
        assert CONTRACT <= set(m), CONTRACT - set(m)
        assert m["status"] == "done" and (d / "config.yaml").is_file()
        preds = pd.read_parquet(d / "predictions.parquet")
        test = preds[preds.split == "test"]
        assert len(test) == m["n_test"] == 120
        acc = float(np.mean(np.stack(test.probs).argmax(1) == test.label))
        assert acc == pytest.approx(m["accuracy"])
        # the toy task is learnable from ground truth; from soft weak labels it is learnt slower
        assert m["accuracy"] > (0.85 if m["kind"] != "w2s" else 0.6)
    assert metrics(w2s[0])["weak_run"] == metrics(weak[0])["run_id"]


def test_reuse_weak_labels_and_finished_runs(tiny_env, tmp_path, trainings):
    run(tiny_overrides(tiny_env, tmp_path))
    assert len(trainings) == 3
    run(tiny_overrides(tiny_env, tmp_path, "loss=logconf"))  # a second strong run
    assert len(trainings) == 4 and "w2s" in trainings[-1]
    assert len(runs(tmp_path, "weak")) == 1 and len(runs(tmp_path, "w2s")) == 2
    run(tiny_overrides(tiny_env, tmp_path))  # the finished experiment again: nothing trains
    run(tiny_overrides(tiny_env, tmp_path, "loss=logconf"))
    assert len(trainings) == 4


def test_at_most_one_compilation_per_bucket(tiny_env, tmp_path):
    from w2s.train.loop import STEPS

    run(tiny_overrides(tiny_env, tmp_path, "kinds=[weak]", "train.buckets=[8,16,32]",
                       "weak.lr=2e-2"))
    (step,) = [fn for key, fn in STEPS._steps.items() if key[3] == "gt" and key[5] == 2e-2]
    # toy texts are 5..30 tokens, so batches of all three lengths were trained on
    assert step._cache_size() == 3


def _cli(overrides, **kw):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "w2s.cli", *overrides], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_kill_equals_uninterrupted(tiny_env, tmp_path):
    extra = ("kinds=[ceiling]", "train.epochs=10", "train.checkpoint_every=4")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = _cli(tiny_overrides(tiny_env, killed, *extra))
    deadline = time.time() + 120
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = [p for p in killed.glob("runs/ceiling/*/checkpoints/*") if p.name.isdigit()]
        if found:
            ckpt = found[0]
            break
        time.sleep(0.02)
    assert ckpt is not None and proc.poll() is None, "training ended before a checkpoint was seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_dir = ckpt.parent.parent
    assert metrics(run_dir)["status"] == "running"  # nothing looks finished
    assert not (run_dir / "predictions.parquet").exists()

    resumed = _cli(tiny_overrides(tiny_env, killed, *extra))
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    whole = _cli(tiny_overrides(tiny_env, clean, *extra))
    out = whole.communicate()[0]
    assert whole.returncode == 0, out

    a, b = metrics(run_dir), metrics(runs(clean, "ceiling")[0])
    assert a["resumed_from"] > 0 and b["resumed_from"] == 0
    assert a["run_id"] == b["run_id"] and a["accuracy"] == b["accuracy"]
    pa = pd.read_parquet(run_dir / "predictions.parquet")
    pb = pd.read_parquet(runs(clean, "ceiling")[0] / "predictions.parquet")
    np.testing.assert_allclose(np.stack(pa.probs), np.stack(pb.probs), atol=1e-6)
