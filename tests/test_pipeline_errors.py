"""Bad input: a clear error naming the culprit, a non-zero exit, and nothing that looks finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides


def w2s_cli(overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "w2s.cli", *overrides], env=env,
                          capture_output=True, text=True, timeout=300)


def assert_nothing_finished(results: Path) -> None:
    for m in results.glob("runs/*/*/metrics.json"):
        assert json.loads(m.read_text())["status"] != "done", m
    for d in results.glob("runs/*/*"):
        assert not (d / "predictions.parquet").exists(), d


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "case",
    ["missing_model", "unknown_task", "missing_column", "label_out_of_range", "empty_after_filter",
     "batch_too_large", "nan_loss"],
)
def test_bad_input(case, tiny_env, tmp_path):
    results = tmp_path / "results"
    rows = [{"text": f"w{i % 7} good", "label": i % 2} for i in range(400)]
    extra: list[str] = []
    expect: list[str] = []
    if case == "missing_model":
        extra, expect = [f"weak.path={tmp_path / 'no_such_model'}"], ["no_such_model"]
    elif case == "unknown_task":
        extra, expect = ["task.kind=nope"], ["nope", "local"]
    elif case == "missing_column":
        bad = write_jsonl(tmp_path / "nolabel.jsonl", [{"text": r["text"]} for r in rows])
        extra, expect = [f"task.path={bad}"], ["nolabel.jsonl", "label"]
    elif case == "label_out_of_range":
        rows[17]["label"] = 5
        bad = write_jsonl(tmp_path / "range.jsonl", rows)
        extra, expect = [f"task.path={bad}", "task.num_labels=2"], ["range.jsonl", "5"]
    elif case == "empty_after_filter":
        extra, expect = ["task.overlong=drop", "task.max_length=2"], ["longer than 2 tokens"]
    elif case == "batch_too_large":
        extra, expect = ["train.batch_size=1000"], ["batch_size=1000", "task.n_a"]
    elif case == "nan_loss":
        extra, expect = ["weak.lr=1e38", "kinds=[weak]"], ["loss became nan"]
    out = w2s_cli(tiny_overrides(tiny_env, results, *extra))
    message = out.stdout + out.stderr
    assert out.returncode != 0, message
    for word in expect:
        assert word in message, (word, message[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert_nothing_finished(results)
    if case == "nan_loss":  # the failed run is recorded as failed, with its error
        (m,) = results.glob("runs/weak/*/metrics.json")
        meta = json.loads(m.read_text())
        assert meta["status"] == "failed" and "loss became" in meta["error"]
