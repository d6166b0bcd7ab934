"""Time ``w2s-analyze``'s table path on 10,000 synthetic run directories.

The store is a realistic sweep: 10 tasks × 5 seeds × (4 weak + 5 strong ceiling runs + 20
weak→strong pairs × 9 losses) = 9,450 finished runs, every one with its own predictions.parquet
(b/val/test = 200/200/500 rows), plus 550 failed, running, truncated, half-written and
prediction-less runs to skip. The timed command is the whole CLI in a fresh interpreter
(imports included) with ``--no-plots``: it reads every metrics.json, the test predictions of every
w2s run and its partners (agreement, single-seed bootstrap), the val/test predictions of every
cascade pair, bootstraps every group and writes all tables. Target: ≤ 30 s on 2 cores.

    python benchmarks/analysis_10k.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.synthetic import make_results  # noqa: E402

TASKS = tuple(f"task{i:02d}" for i in range(10))
SEEDS = (0, 1, 2, 3, 4)
WEAK = {"weak-30M": 30e6, "weak-70M": 70e6, "gpt2": 124e6, "gpt2-medium": 355e6}
STRONG = {
    "gpt2-large": 774e6,
    "gpt2-xl": 1.5e9,
    "strong-3B": 3e9,
    "strong-7B": 7e9,
    "strong-14B": 14e9,
}
LOSSES = (
    "xent",
    "logconf",
    "logconf_linear",
    "product",
    "kd_fkl_T2",
    "kd_rkl_T2",
    "kd_js_T2",
    "kd_tv_T2",
    "xent_hard",
)
N_BROKEN = {"failed": 200, "running": 150, "truncated": 100, "no-predictions": 50, "no-metrics": 50}
TARGET_S = 30.0


def _make_task(args: tuple[str, int]) -> None:
    root, i = args
    make_results(root, tasks=(TASKS[i],), weak_models=WEAK, strong_models=STRONG, losses=LOSSES,
                 seeds=SEEDS, n_test=500, n_val=200, n_b=200, seed=i)  # fmt: skip


def _add_broken(root: Path) -> None:
    """Runs the pipeline leaves behind when jobs fail, are killed or are still going."""
    template = next((root / "runs" / "w2s").iterdir())
    meta = json.loads((template / "metrics.json").read_text())
    for kind, count in N_BROKEN.items():
        for j in range(count):
            run_dir = root / "runs" / "w2s" / f"{kind}-{j:04d}"
            shutil.copytree(template, run_dir)
            m = {**meta, "run_id": run_dir.name}
            text = json.dumps(m)
            if kind == "failed":
                text = json.dumps(
                    {**m, "status": "failed", "error": "RESOURCE_EXHAUSTED: out of memory"}
                )
            elif kind == "running":
                text = json.dumps({**m, "status": "running"})
            elif kind == "truncated":
                text = text[: len(text) // 3]
            elif kind == "no-predictions":
                (run_dir / "predictions.parquet").unlink()
            (run_dir / "metrics.json").write_text(text)
            if kind == "no-metrics":
                (run_dir / "metrics.json").unlink()


def build(root: Path) -> int:
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_make_task, [(str(root), i) for i in range(len(TASKS))]))
    _add_broken(root)
    return sum(1 for _ in root.glob("runs/*/*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the run store here and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="w2s-analysis-10k-"))
    try:
        t0 = time.perf_counter()
        n_dirs = build(root)
        print(f"built {n_dirs} run directories in {time.perf_counter() - t0:.1f} s ({root})")
        exe = shutil.which("w2s-analyze")
        cmd = [exe] if exe else [sys.executable, "-m", "analysis"]
        cmd += [str(root), "--no-plots", "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        sys.stderr.write(proc.stderr)
        if proc.returncode != 0:
            print(f"w2s-analyze failed with exit code {proc.returncode}")
            return 1
        ok = elapsed <= TARGET_S
        print(f"w2s-analyze table path on {n_dirs} runs: {elapsed:.1f} s wall "
              f"(target ≤ {TARGET_S:.0f} s): {'PASS' if ok else 'FAIL'}")  # fmt: skip
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
