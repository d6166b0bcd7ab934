"""Examples/s of K seeds trained side by side in one program (train.vmap_seeds=K) against one seed.

Small models leave most of a device idle, and per-step overheads (dispatch, host batching)
dominate; stacking seeds amortises them. Run: ``python benchmarks/vmap_seeds.py [--k 8]``.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from w2s.config import TrainConfig
from w2s.models import Classifier
from w2s.models.registry import family_for
from w2s.train.loop import View, train_group
from w2s.train.losses import step_loss


def small_model(seed: int, hidden: int, layers: int, vocab: int) -> Classifier:
    family = family_for("bert", "benchmark")
    cfg = family.config_from_hf(
        {
            "model_type": "bert",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "intermediate_size": 4 * hidden,
            "max_position_embeddings": 128,
        }
    )
    backbone = family.module(
        cfg,
        dtype=jax.numpy.float32,
        param_dtype=jax.numpy.float32,
        attention="xla",
        rngs=nnx.Rngs(seed),
    )
    return Classifier(backbone, 2, "mean")


def measure(k: int, n: int, seq: int, batch: int, epochs: int, hidden: int, layers: int) -> float:
    rng = np.random.default_rng(0)
    vocab = 1000
    view = View(
        [
            rng.integers(5, vocab, size=int(rng.integers(seq // 2, seq))).astype(np.int32)
            for _ in range(n)
        ],
        0,
    )
    labels = rng.integers(0, 2, n)
    targets = np.eye(2, dtype=np.float32)[labels]
    cfg = OmegaConf.structured(
        TrainConfig(epochs=epochs, batch_size=batch, buckets=[seq], progress=False, warmup_frac=0.0)
    )
    models = [small_model(s, hidden, layers, vocab) for s in range(k)]
    results = train_group(
        models,
        view,
        [targets] * k,
        labels,
        cfg,
        seeds=list(range(k)),
        loss_fn=step_loss(),
        loss_key=("bench", k),
        lr=1e-3,
        buckets=[seq],
    )
    return results[0].examples_per_second  # all K seeds' examples, compile time excluded


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    a = p.parse_args()
    shape = (a.n, a.seq, a.batch, a.epochs, a.hidden, a.layers)
    one = measure(1, *shape)
    many = measure(a.k, *shape)
    print(
        f"device {jax.devices()[0].device_kind} ({platform.machine()}, {os.cpu_count()} cpus), "
        f"load {os.getloadavg()[0]:.2f}; BERT hidden {a.hidden} x {a.layers} layers, "
        f"batch {a.batch}, seq {a.seq}"
    )
    print(
        f"1 seed: {one:,.0f} examples/s; {a.k} seeds side by side: {many:,.0f} examples/s; "
        f"ratio {many / one:.2f}x"
    )


if __name__ == "__main__":
    main()
