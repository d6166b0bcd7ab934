"""The GPU readiness script runs in CI at tiny shapes on CPU (``--cpu-smoke``), so it cannot rot:
every check passes, with its figure printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_cpu_smoke_passes_every_check():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke"], capture_output=True, text=True,
        timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    verdicts = re.findall(r"^\[(PASS|FAIL)\] (.+?) \(", out.stdout, re.M)
    assert verdicts == [("PASS", "attention"), ("PASS", "bf16 training"), ("PASS", "throughput")]
    diffs = [float(x) for x in re.findall(r"max \|xla - float64 reference\| = (\S+)", out.stdout)]
    assert len(diffs) == 2 and all(0 < d <= 2e-2 for d in diffs)  # bf16 is not exact, nor far
    assert "cudnn: validated for bf16 compute, not executed" in out.stdout
    assert re.search(r"^  jax +\d+\.\d+", out.stdout, re.M)  # the throughput table's row


def test_gpu_check_fails_loudly_when_a_check_fails():
    """A tolerance no bf16 run can meet turns the verdict and the exit status."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--loss-tol", "0", "--only", "bf16 training"], capture_output=True,
        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert out.returncode == 1
    assert re.findall(r"^\[(PASS|FAIL)\] (.+?) \(", out.stdout, re.M) == [("FAIL", "bf16 training")]
