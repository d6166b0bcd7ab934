"""Live distillation against offline labels: train-step throughput of the same strong model.

Live mode runs the frozen weak model's forward pass inside the strong model's jitted step (on its
own token view), offline mode reads cached soft labels. Both are timed in one run, alternating,
on the real MiniLM checkpoint (strong) and its truncations (weak), batch 32 x 64 tokens, f32.
Run: ``python benchmarks/live_kd.py [--repeats 3 --steps 8]``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from w2s.models import load_classifier
from w2s.train.losses import step_loss
from w2s.train.step import make_train_step


def _minilm() -> str:
    cache = Path(os.environ.get("W2S_CACHE") or "~/.cache/w2s").expanduser()
    return str(cache / "models" / "all-minilm-l6-v2")


def _batch(b: int, s: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30000, (b, s)).astype(np.int32)
    mask = np.ones((b, s), np.int32)
    labels = rng.integers(0, 2, b).astype(np.int32)
    return {"input_ids": ids, "attention_mask": mask, "teacher_input_ids": ids,
            "teacher_attention_mask": mask, "labels": labels,
            "targets": np.eye(2, dtype=np.float32)[labels], "weight": np.ones(b, np.float32)}


def _stepper(teacher_layers: int | None):
    """(run n steps -> seconds) for offline labels (None) or a live weak model of that depth."""
    strong = load_classifier(_minilm(), 2, pooling="mean")
    graphdef, params = nnx.split(strong)
    tx = optax.adamw(1e-5)
    t_params, teacher = None, None
    if teacher_layers is not None:
        weak = load_classifier(_minilm(), 2, pooling="mean",
                               overrides={"num_hidden_layers": teacher_layers})
        t_graphdef, t_params = nnx.split(weak)
        teacher = (t_graphdef, 1.0)
    step = jax.jit(make_train_step(graphdef, tx, step_loss(),
                                   teacher=teacher), donate_argnums=(0, 1))
    state = {"params": jax.tree.map(np.array, params)}
    state["opt"] = tx.init(state["params"])
    batch = _batch(32, 64)
    extra = (t_params,) if teacher else ()

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            state["params"], state["opt"], stats = step(state["params"], state["opt"], batch,
                                                        np.float32(0.5), *extra)
        jax.block_until_ready(stats["loss"])
        return time.perf_counter() - t0

    run(1)  # compile
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    modes = {"offline labels": None, "live, weak = minilm-l0": 0, "live, weak = minilm-l1": 1}
    runners = {name: _stepper(layers) for name, layers in modes.items()}
    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(a.repeats):  # alternate, so load changes hit every mode alike
        for name, run in runners.items():
            times[name].append(run(a.steps) / a.steps)
    base = np.median(times["offline labels"])
    print(f"{jax.devices()[0].device_kind}, load {os.getloadavg()[0]:.2f}; strong minilm-l6, "
          f"batch 32 x 64 tokens, f32, median of {a.repeats} x {a.steps} steps")
    for name in modes:
        t = np.median(times[name])
        print(f"{name:<24} {t * 1e3:8.1f} ms/step {32 / t:8.1f} examples/s "
              f"{base / t:6.2f}x offline throughput")


if __name__ == "__main__":
    main()
