"""A parallel local sweep (joblib launcher, two worker processes) keeps the run store consistent.

Both jobs of the sweep need the same weak run, so they race to train or reuse it: the run must
be trained once (the second job waits for it and reuses it), and every run left behind must be
finished, complete and loadable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
REUSED = "already finished: reused"


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _b_probs(run_dir: Path, column: str) -> pd.Series:
    df = pd.read_parquet(run_dir / "predictions.parquet")
    return df[df.split == "b"].set_index("id")[column]


@pytest.mark.slow
def test_two_parallel_jobs_share_one_weak_run(tiny_env, tmp_path):
    from analysis.runs import load_runs

    results, logs = tmp_path / "results", tmp_path / "logs"
    overrides = tiny_overrides(
        tiny_env,
        results,
        "kinds=[weak,w2s]",
        "loss=xent,logconf",  # two strong-side jobs that need the same weak run
        "train.epochs=3",
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
        # the job logs outside results_dir: load_runs counts their .hydra/config.yaml as runs
        f"hydra.sweep.dir={logs}",
    )
    # the tree under test first: the loky workers import w2s from it as well
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-m", "w2s.cli", "-m", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "w2s: error" not in out, out[-4000:]

    runs = {k: sorted((results / "runs" / k).glob("*")) for k in ("weak", "ceiling", "w2s")}
    assert len(runs["weak"]) == 1, runs["weak"]
    assert not runs["ceiling"]
    assert len(runs["w2s"]) == 2, runs["w2s"]
    for d in runs["weak"] + runs["w2s"]:
        assert _metrics(d)["status"] == "done", (d, _metrics(d))
        assert (d / "predictions.parquet").is_file(), d

    # trained once: the job that did not train it waited for it and reused it
    job_logs = sorted(logs.glob("*/cli.log"))
    assert len(job_logs) == 2, job_logs
    weak_id = _metrics(runs["weak"][0])["run_id"]
    reused = [f for f in job_logs if f"weak run {weak_id} {REUSED}" in f.read_text()]
    assert len(reused) == 1, [f.read_text()[-2000:] for f in job_logs]

    weak_b = _b_probs(runs["weak"][0], "probs")
    losses = set()
    for d in runs["w2s"]:
        m = _metrics(d)
        losses.add(m["loss"])
        assert m["weak_run"] == weak_id
        soft = _b_probs(d, "weak_soft")
        assert len(soft) == len(weak_b) == 160
        np.testing.assert_array_equal(np.stack(soft), np.stack(weak_b.loc[soft.index]))
    assert losses == {"xent", "logconf"}

    assert not [p for p in results.rglob(".*.tmp")], "temporary files left behind"
    frame, report = load_runs(results)
    assert report.skipped == [] and report.n_loaded == len(frame) == 3, report.skipped
