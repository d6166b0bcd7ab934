"""The dry run's memory plan against XLA's compiled memory analysis of the real train step.

    python benchmarks/plan_vs_xla.py                       # MiniLM and GPT-2-medium shapes
    python benchmarks/plan_vs_xla.py --models minilm --batch 32 --seq 64

For each model shape and setting (unrolled or scanned layers, full remat, LoRA r=8), the plan's
total (``w2s.plan.plan``: exact parameter, gradient and optimizer bytes, activations from the
traced residuals) over XLA's peak (arguments + outputs + temporaries - aliased) of the donated
step compiled for this machine's backend from abstract parameters. Float32, one device.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_memory import SHAPES as _REAL  # noqa: E402  the MiniLM and GPT-2-medium shapes

SHAPES = {
    **_REAL,
    "qwen2-tiny": {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 64,
                   "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 512,
                   "tie_word_embeddings": True},
}
SETTINGS = {  # name -> (train overrides, LoRA rank)
    "unrolled": ({}, 0),
    "scanned": ({"scan_layers": True}, 0),
    "scanned, remat full": ({"scan_layers": True, "remat": "full"}, 0),
    "LoRA r=8, unrolled": ({}, 8),
    "LoRA r=8, scanned": ({"scan_layers": True}, 8),
    "LoRA r=8, scanned, remat full": ({"scan_layers": True, "remat": "full"}, 8),
}


def compare(path: str, train: dict, rank: int, batch: int, seq: int) -> dict:
    from omegaconf import OmegaConf

    from w2s.config import LoRAConfig, ModelConfig, TrainConfig
    from w2s.plan import plan, xla_step_bytes

    m = OmegaConf.structured(ModelConfig(name=path, path=path))
    t = OmegaConf.structured(TrainConfig(batch_size=batch, lora=LoRAConfig(rank=rank), **train))
    p = plan(m, t, {"data": 1, "fsdp": 1, "tp": 1}, seq, use_lora=rank > 0)
    x = xla_step_bytes(m, t, seq, use_lora=rank > 0)
    return {"plan": p, "xla": x, "ratio": p["total"] / x["peak"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,gpt2-medium")
    ap.add_argument("--settings", default=";".join(SETTINGS), help="names, separated by ;")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import jax

    root = Path(tempfile.mkdtemp())
    mib = 2.0**20
    print(f"backend {jax.default_backend()}, batch {args.batch} x {args.seq}, float32 (MiB)")
    print("| model | setting | plan: params + grads + optimizer | plan: activations "
          "| plan total | XLA peak | plan / XLA |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.models.split(","):
        ckpt = root / name
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps(SHAPES[name]))
        for setting in args.settings.split(";"):
            train, rank = SETTINGS[setting]
            r = compare(str(ckpt), train, rank, args.batch, args.seq)
            p = r["plan"]
            state = p["params"] + p["grads"] + p["optimizer"]
            print(f"| {name} | {setting} | {state / mib:.1f} | {p['activations'] / mib:.1f} | "
                  f"{p['total'] / mib:.1f} | {r['xla']['peak'] / mib:.1f} | {r['ratio']:.2f} |",
                  flush=True)
            rows.append({"model": name, "setting": setting, **r})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
