"""GPU readiness in three checks, each printed with its figure and a PASS/FAIL verdict:

1. attention: cuDNN's fused kernel against the XLA path on the same bf16 inputs (right-padded
   rows, causal and not), max |difference| <= 2e-2;
2. bf16 training: 50 steps of a GPT-2-small-shaped classifier with bf16 compute (float32 master
   weights) against the same steps in float32, max per-step |loss difference| <= --loss-tol;
3. throughput: ``benchmarks/train_throughput.py --all-gpu``'s table (jax against torch).

``--cpu-smoke`` runs the same code on CPU at tiny shapes so that CI keeps it working: cuDNN
cannot run there, so check 1 compares the XLA path in bf16 with a float64 NumPy reference and
validates (does not execute) the cuDNN choice; check 3 times a tiny MiniLM step.

    bash benchmarks/gpu_check.sh            # on a fresh machine with one NVIDIA GPU
    python benchmarks/gpu_check.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def reference_attention(q, k, v, lengths, causal: bool) -> np.ndarray:
    """Masked softmax attention in float64 (q, k, v [B, T, N, H]; keys past a row's length out)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    mask = np.arange(t)[None, :] < np.asarray(lengths)[:, None]  # [B, S]
    allowed = np.broadcast_to(mask[:, None, None, :], logits.shape)
    if causal:
        allowed = allowed & np.tril(np.ones((t, t), bool))[None, None]
    logits = np.where(allowed, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", w, v)


def check_attention(smoke: bool) -> tuple[bool, str]:
    import jax
    import jax.numpy as jnp

    from w2s.models.attention import attend
    from w2s.models.attention import check_attention as validate

    b, t, n, h = (2, 16, 2, 8) if smoke else (8, 512, 12, 64)
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.bfloat16) for _ in range(3))
    lengths = jnp.asarray(rng.integers(t // 2, t + 1, size=b), jnp.int32)
    lines, worst = [], 0.0
    for causal in (False, True):
        xla = attend(q, k, v, lengths, causal=causal, implementation="xla")
        if smoke:
            other = reference_attention(q, k, v, lengths, causal)
            name = "float64 reference"
        else:
            other = attend(q, k, v, lengths, causal=causal, implementation="cudnn")
            name = "cudnn"
        valid = (np.arange(t)[None, :] < np.asarray(lengths)[:, None])[..., None, None]
        diff = float(np.max(np.abs(np.asarray(xla, np.float64) - np.asarray(other, np.float64))
                            * valid))
        worst = max(worst, diff)
        lines.append(f"  causal={causal}: max |xla - {name}| = {diff:.2e} over valid rows")
    if smoke:
        validate("cudnn", {"strong": "bfloat16"}, "gpu")  # validated, not executed
        lines.append("  cudnn: validated for bf16 compute, not executed (no GPU)")
    assert jax.default_backend() == ("cpu" if smoke else "gpu"), jax.default_backend()
    return worst <= 2e-2, "\n".join(lines)


def check_bf16_training(smoke: bool, steps: int, tol: float) -> tuple[bool, str]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from w2s.config import TrainConfig
    from w2s.models import Classifier
    from w2s.models.registry import family_for
    from w2s.train.losses import step_loss
    from w2s.train.step import make_train_step, optimizer

    hf = {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024, "n_embd": 768,
          "n_layer": 12, "n_head": 12}
    b, t = 16, 128
    if smoke:
        hf.update(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)
        b, t = 4, 16
    fam = family_for("gpt2", "gpt2")
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(steps):  # label 1 iff token 7 occurs
        ids = rng.integers(8, hf["vocab_size"], size=(b, t))
        labels = rng.integers(0, 2, size=b)
        ids[labels == 1, rng.integers(0, t)] = 7
        batches.append({
            "input_ids": jnp.asarray(ids, jnp.int32), "attention_mask": jnp.ones((b, t), jnp.int32),
            "targets": jnp.asarray(np.eye(2, dtype=np.float32)[labels]),
            "labels": jnp.asarray(labels, jnp.int32), "weight": jnp.ones((b,), jnp.float32),
        })
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0)
    curves = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        backbone = fam.module(fam.config_from_hf(hf), dtype=dtype, param_dtype=jnp.float32,
                              rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(Classifier(backbone, 2, fam.pooling))
        tx = optimizer(cfg, 3e-3 if smoke else 1e-4, steps)  # tiny models need more to move
        step = jax.jit(make_train_step(graphdef, tx, step_loss()), donate_argnums=(0, 1))
        state, losses = tx.init(params), []
        for batch in batches:
            params, state, stats = step(params, state, batch, jnp.float32(0.5))
            losses.append(float(stats["loss"]))
        curves[name] = np.array(losses)
    diff = np.abs(curves["bfloat16"] - curves["float32"])
    text = (f"  {steps} steps, batch {b} x {t}: loss float32 {curves['float32'][0]:.4f} -> "
            f"{curves['float32'][-1]:.4f}, bf16 {curves['bfloat16'][0]:.4f} -> "
            f"{curves['bfloat16'][-1]:.4f}; max per-step |difference| {diff.max():.4f} "
            f"(tolerance {tol})")
    return bool(diff.max() <= tol), text


def check_throughput(smoke: bool) -> tuple[bool, str]:
    script = HERE / "train_throughput.py"
    if smoke:
        cmd = [sys.executable, str(script), "--model", "minilm", "--batch", "2", "--seq", "16",
               "--steps", "1", "--repeats", "1", "--trainers", "jax"]
    else:
        cmd = [sys.executable, str(script), "--all-gpu", "--steps", "3", "--repeats", "3",
               "--trainers", "jax,torch"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = "\n".join("  " + line for line in out.stdout.strip().splitlines())
    if out.returncode != 0:
        text += "\n  " + out.stderr.strip()[-2000:]
    return out.returncode == 0, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (CI)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--loss-tol", type=float, default=0.05)
    ap.add_argument("--only", help="comma-separated check names (default: all)")
    args = ap.parse_args(argv)
    if args.cpu_smoke:
        import os

        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import w2s.runtime  # noqa: F401

    checks = [
        ("attention", lambda: check_attention(args.cpu_smoke)),
        ("bf16 training", lambda: check_bf16_training(args.cpu_smoke, args.steps, args.loss_tol)),
        ("throughput", lambda: check_throughput(args.cpu_smoke)),
    ]
    if args.only:
        wanted = set(args.only.split(","))
        checks = [c for c in checks if c[0] in wanted]
    ok_all = True
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            ok, text = fn()
        except Exception as e:  # a check that crashes is a failed check, the others still run
            ok, text = False, f"  {type(e).__name__}: {e}"
        ok_all &= ok
        print(f"[{'PASS' if ok else 'FAIL'}] {name} ({time.perf_counter() - t0:.1f} s)\n{text}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())
