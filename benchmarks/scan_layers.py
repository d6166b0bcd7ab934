"""Scanned against unrolled layers, and what each remat policy keeps: compile time, step time
and XLA's own count of the train step's temporaries, for one model shape at several depths.

The train step is w2s's (classifier, cross-entropy, AdamW, clipping), on random weights.
Compile time is ``jit(...).lower(...).compile()``; the step time is the median of ``--steps``
steps after compiling; temporaries come from ``compiled.memory_analysis()``.

    python benchmarks/scan_layers.py                              # GPT-2 shape 256 wide, CPU
    python benchmarks/scan_layers.py --hidden 1600 --heads 25 --depths 12,48 --batch 8 \\
        --seq 512 --dtype bfloat16                                # gpt2-xl width, on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # run from a checkout without installing w2s
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from w2s.config import TrainConfig  # noqa: E402
from w2s.models import Classifier  # noqa: E402
from w2s.models.gpt2 import Config, Model  # noqa: E402
from w2s.train.losses import step_loss  # noqa: E402
from w2s.train.step import make_train_step, optimizer  # noqa: E402


def measure(args, depth: int, scan: bool, remat: str) -> dict:
    cfg = Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_layers=depth,
        num_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_positions=args.seq,
    )
    backbone = Model(
        cfg,
        dtype=jnp.dtype(args.dtype),
        remat=remat,
        scan_layers=scan,
        rngs=nnx.Rngs(0),
    )
    graphdef, params = nnx.split(Classifier(backbone, 2, "last"))
    tx = optimizer(TrainConfig(), 1e-5, 1000)

    loss = step_loss()

    rng = np.random.default_rng(0)
    b, s = args.batch, args.seq
    batch = jax.device_put(
        {
            "input_ids": rng.integers(1, args.vocab, (b, s)).astype(np.int32),
            "attention_mask": np.ones((b, s), np.int32),
            "targets": np.eye(2, dtype=np.float32)[rng.integers(0, 2, b)],
            "labels": rng.integers(0, 2, b).astype(np.int32),
            "weight": np.ones(b, np.float32),
        }
    )
    opt_state = tx.init(params)
    frac = np.float32(0.5)
    jitted = jax.jit(make_train_step(graphdef, tx, loss), donate_argnums=(0, 1))
    t0 = time.perf_counter()
    compiled = jitted.lower(params, opt_state, batch, frac).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    times = []
    for _ in range(args.steps + 1):  # the first call also transfers: not timed
        t0 = time.perf_counter()
        params, opt_state, stats = compiled(params, opt_state, batch, frac)
        jax.block_until_ready((params, stats))
        times.append(time.perf_counter() - t0)
    return {
        "depth": depth,
        "scan_layers": scan,
        "remat": remat,
        "compile_s": compile_s,
        "step_s": statistics.median(times[1:]),
        "temp_mib": temp / 2**20,
        "loss": float(stats["loss"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--depths", default="6,12,24,48")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--remats", default="none,full")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = []
    print(
        f"device {jax.devices()[0].device_kind}; GPT-2 shape hidden {args.hidden}, "
        f"batch {args.batch} x {args.seq}, {args.dtype}, jax {jax.__version__}"
    )
    print(f"{'depth':>5} {'layers':>8} {'remat':>5} {'compile s':>9} {'step s':>8} {'temp MiB':>9}")
    for depth in (int(d) for d in args.depths.split(",")):
        for remat in args.remats.split(","):
            for scan in (False, True):
                r = measure(args, depth, scan, remat)
                rows.append(r)
                print(
                    f"{depth:>5} {'scanned' if scan else 'unrolled':>8} {remat:>5} "
                    f"{r['compile_s']:>9.2f} {r['step_s']:>8.4f} {r['temp_mib']:>9.1f}"
                )
    print("scanned / unrolled, same depth and remat:")
    for u in (r for r in rows if not r["scan_layers"]):
        s = next(
            r
            for r in rows
            if r["scan_layers"] and r["depth"] == u["depth"] and r["remat"] == u["remat"]
        )
        print(
            f"  depth {u['depth']:>3} remat {u['remat']:>4}: compile "
            f"{s['compile_s'] / u['compile_s']:.2f}x, step {s['step_s'] / u['step_s']:.2f}x, "
            f"temporaries {s['temp_mib'] / max(u['temp_mib'], 1e-9):.2f}x, "
            f"|loss diff| {abs(s['loss'] - u['loss']):.1e}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
