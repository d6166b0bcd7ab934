"""Peak host memory of ``load_backbone`` relative to the checkpoint's size (target: < 1.5x).

A child process builds and saves a >= 1 GB float32 GPT-2 checkpoint with transformers + torch;
a fresh child then imports w2s, records its resident set size, resets the high-water mark and
loads the checkpoint, so the figure is the loader's own peak: parameters plus transients.

    python benchmarks/load_memory.py [--dir DIR] [--layers 20] [--hidden 1024] [--dtype float32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT = 1.5
ROOT = Path(__file__).resolve().parents[1]  # run from a checkout without installing w2s


def build(out: Path, layers: int, hidden: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=hidden,
        n_layer=layers,
        n_head=hidden // 64,
        bos_token_id=0,
        eos_token_id=0,
    )
    GPT2Model(cfg).save_pretrained(out, safe_serialization=True)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(ckpt: Path, dtype: str) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    sys.path.insert(0, str(ROOT))
    from w2s.models import load_backbone

    jnp.zeros(1).block_until_ready()  # start the backend before the baseline
    base = _status_kib("VmRSS")
    try:  # reset VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    model = load_backbone(str(ckpt), dtype=dtype)
    jax.block_until_ready(nnx.state(model))
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(nnx.state(model)))
    return {
        "baseline_kib": base,
        "peak_kib": peak,
        "hwm_reset": reset,
        "seconds": seconds,
        "param_bytes": params,
        "after_kib": _status_kib("VmRSS"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, help="reuse or create the checkpoint here (default: temp)")
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dtype", default="float32", help="parameter dtype to load into")
    ap.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._build:
        build(args._build, args.layers, args.hidden)
        return 0
    if args._measure:
        print(json.dumps(measure(args._measure, args.dtype)))
        return 0

    tmp = None
    ckpt = args.dir
    if ckpt is None:
        tmp = tempfile.TemporaryDirectory(prefix="w2s-loadmem-")
        ckpt = Path(tmp.name) / "gpt2-big"
    me = [sys.executable, __file__, "--layers", str(args.layers), "--hidden", str(args.hidden)]
    try:
        if not (ckpt / "model.safetensors").is_file():
            t0 = time.perf_counter()
            subprocess.run([*me, "--_build", str(ckpt)], check=True)
            print(f"built {ckpt} in {time.perf_counter() - t0:.0f}s")
        size = sum(f.stat().st_size for f in ckpt.glob("*.safetensors"))
        run = subprocess.run(
            [*me, "--dtype", args.dtype, "--_measure", str(ckpt)], capture_output=True, text=True
        )
        if run.returncode:
            sys.stderr.write(run.stderr)
            return run.returncode
        r = json.loads(run.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            tmp.cleanup()
    peak = (r["peak_kib"] - r["baseline_kib"]) * 1024
    ratio = peak / size
    print(
        f"checkpoint: {size / 2**30:.3f} GiB ({args.layers} layers, hidden {args.hidden}, float32)"
    )
    print(
        f"loaded as {args.dtype}: {r['param_bytes'] / 2**30:.3f} GiB of parameters in {r['seconds']:.1f}s"
    )
    print(
        f"peak RSS above the post-import baseline: {peak / 2**30:.3f} GiB "
        f"(VmHWM reset: {r['hwm_reset']}; RSS after load {(r['after_kib'] - r['baseline_kib']) / 2**20:.3f} GiB)"
    )
    print(
        f"peak / checkpoint size: {ratio:.2f}x (limit {LIMIT}x) -> {'OK' if ratio < LIMIT else 'FAIL'}"
    )
    return 0 if ratio < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
