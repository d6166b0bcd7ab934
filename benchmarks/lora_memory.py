"""LoRA against full fine-tuning: parameter, optimizer-state and train-step memory, from XLA's
compiled memory analysis of w2s's real train step (nothing is allocated: parameters are
abstract; the step is lowered and compiled for this machine's backend).

    python benchmarks/lora_memory.py                    # MiniLM and GPT-2-medium shapes
    python benchmarks/lora_memory.py --rank 16 --batch 8 --seq 256

Reported per setting: trained parameters; the bytes of parameters and of optimizer state (real
optax state shapes); and XLA's argument, output, temporary and alias bytes for the donated
step, with its peak estimate argument + output + temporaries - aliased.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "minilm": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384,
               "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
               "max_position_embeddings": 512},
    "gpt2-medium": {"model_type": "gpt2", "vocab_size": 50257, "n_positions": 1024,
                    "n_embd": 1024, "n_layer": 24, "n_head": 16},
}


def measure(name: str, rank: int, batch: int, seq: int, scan: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from w2s.config import LoRAConfig, TrainConfig
    from w2s.models import Classifier, lora
    from w2s.models.registry import family_for
    from w2s.train.losses import step_loss
    from w2s.train.step import make_train_step, optimizer

    hf = SHAPES[name]
    fam = family_for(hf["model_type"], name)

    def build():
        backbone = fam.module(fam.config_from_hf(hf), dtype=jnp.float32,
                              param_dtype=jnp.float32, scan_layers=scan, rngs=nnx.Rngs(0))
        model = Classifier(backbone, 2, fam.pooling)
        if rank:
            lora.add(model.backbone, fam, rank=rank, alpha=2.0 * rank,
                     groups=["attention", "mlp"], seed=0)
        return model

    graphdef, params = nnx.split(nnx.eval_shape(build))
    labels = lora.trainable_labels(params) if rank else None
    cfg = TrainConfig(lora=LoRAConfig(rank=rank))
    tx = optimizer(cfg, 1e-4, 1000, labels)
    opt = jax.eval_shape(tx.init, params)
    batch_shapes = {
        "input_ids": jax.ShapeDtypeStruct((batch, seq), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((batch, seq), jnp.int32),
        "targets": jax.ShapeDtypeStruct((batch, 2), jnp.float32),
        "labels": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "weight": jax.ShapeDtypeStruct((batch,), jnp.float32),
    }
    step = jax.jit(make_train_step(graphdef, tx, step_loss()), donate_argnums=(0, 1))
    mem = step.lower(params, opt, batch_shapes, jnp.float32(0.5)).compile().memory_analysis()

    def nbytes(tree):
        return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))

    leaves = jax.tree.leaves(params)
    trained = (sum(x.size for x, lab in zip(leaves, jax.tree.leaves(labels), strict=True)
                   if lab == "train") if rank else sum(x.size for x in leaves))
    out = {
        "model": name, "rank": rank, "batch": batch, "seq": seq, "scan_layers": scan,
        "params": sum(x.size for x in leaves), "trained": trained,
        "param_bytes": nbytes(params), "optimizer_bytes": nbytes(opt),
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
    }
    out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"]
                         - out["alias_bytes"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,gpt2-medium")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import jax

    rows = []
    for name in args.models.split(","):
        for rank in (0, args.rank):
            rows.append(measure(name, rank, args.batch, args.seq, scan=True))
    mib = 2.0**20
    print(f"backend {jax.default_backend()}, batch {args.batch} x {args.seq}, float32, scanned "
          f"layers; XLA memory analysis of the compiled, donated train step (MiB)")
    print("| model | setting | trained params | params | optimizer | XLA arguments | XLA temps "
          "| XLA peak | peak / full |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        full = next(x for x in rows if x["model"] == r["model"] and x["rank"] == 0)
        setting = "full fine-tuning" if r["rank"] == 0 else f"LoRA r={r['rank']}"
        print(f"| {r['model']} | {setting} | {r['trained'] / 1e6:.2f} M | "
              f"{r['param_bytes'] / mib:.1f} | {r['optimizer_bytes'] / mib:.1f} | "
              f"{r['argument_bytes'] / mib:.1f} | {r['temp_bytes'] / mib:.1f} | "
              f"{r['peak_bytes'] / mib:.1f} | {r['peak_bytes'] / full['peak_bytes']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
