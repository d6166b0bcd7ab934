"""Dry run: bytes per device of a strong model's training, from abstract shapes only.

Nothing is allocated: the module is built with ``nnx.eval_shape``, the optimizer state with
``jax.eval_shape(tx.init, ...)``, and each array's share per device follows the family's
sharding rules on the configured mesh. Activations are what the backward pass really keeps:
the residuals JAX saves for it, read off the traced ``jax.vjp`` of the classifier's loss at
the per-device batch, with the configured compute dtype, remat policy, scanned layers and
LoRA adapters; a scanned backward pass also holds one layer's cotangents, and a
rematerialised one the recomputed layer, each counted as one layer's full residuals. ``tests/test_plan.py`` compares the totals
with XLA's compiled memory analysis of the real train step.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.loading import abstract_module
from w2s.models.registry import family_for
from w2s.models.sharding import path_str

# Config facts of public checkpoints, so a plan works offline. Only the keys the families read.
KNOWN_CONFIGS: dict[str, dict] = {
    "gpt2": {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium": {"model_type": "gpt2", "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"model_type": "gpt2", "n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"model_type": "gpt2", "n_embd": 1600, "n_layer": 48, "n_head": 25},
    "Qwen/Qwen2.5-0.5B": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-1.5B": {
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-3B": {
        "hidden_size": 2048,
        "intermediate_size": 11008,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "Qwen/Qwen2.5-7B": {
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
}
_GPT2_DEFAULTS = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "layer_norm_epsilon": 1e-5,
    "activation_function": "gelu_new",
}
_QWEN2_DEFAULTS = {
    "model_type": "qwen2",
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
}


def hf_config(path: str) -> dict:
    """The checkpoint's config.json if reachable, else the known facts for a public id."""
    from w2s.models.hub import read_config, resolve

    try:
        return read_config(resolve(path))
    except Exception:
        if path not in KNOWN_CONFIGS:
            raise
        base = (
            _GPT2_DEFAULTS if KNOWN_CONFIGS[path].get("model_type") == "gpt2" else _QWEN2_DEFAULTS
        )
        return {**base, **KNOWN_CONFIGS[path]}


def _shard_factor(path: tuple, shape: tuple, rules, mesh_shape: dict[str, int]) -> int:
    name = path_str(path)
    for pattern, axes in rules:
        if re.fullmatch(pattern, name) and len(axes) == len(shape):
            return math.prod(
                mesh_shape[a]
                for a, d in zip(axes, shape, strict=True)
                if a is not None and d % mesh_shape[a] == 0
            )
    return 1


def _bytes(x) -> int:
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


def plan(
    model_cfg, train_cfg, mesh_shape: dict[str, int], seq_len: int, use_lora: bool = False
) -> dict:
    """Bytes per device: params, grads, optimizer state, activations, and their total. With
    ``use_lora`` (``train.lora``), gradients and optimizer state cover the adapters alone."""
    from w2s.models import lora
    from w2s.train.step import optimizer

    hf = {**hf_config(model_cfg.path), **dict(model_cfg.overrides)}
    family = family_for(hf.get("model_type"), model_cfg.path)
    cfg = family.config_from_hf(hf)
    param_dtype = jnp.dtype(model_cfg.param_dtype)
    module = abstract_module(
        family, cfg, dtype=jnp.dtype(model_cfg.compute_dtype), param_dtype=param_dtype
    )
    if use_lora:
        lo = train_cfg.lora
        lora.add(module, family, rank=lo.rank, alpha=lo.alpha, groups=list(lo.targets), seed=0)
    flat = list(nnx.to_flat_state(nnx.state(module, nnx.Param)))
    params = {path_str(p): v.get_value() for p, v in flat}
    factors = {
        path_str(p): _shard_factor(p, v.get_value().shape, family.sharding, mesh_shape)
        for p, v in flat
    }
    n_params = sum(math.prod(x.shape) for x in params.values())
    p_bytes = sum(_bytes(x) / factors[k] for k, x in params.items())
    trained = {k: x for k, x in params.items() if not use_lora or "/lora/" in f"/{k}/"}
    g_bytes = sum(_bytes(x) / factors[k] for k, x in trained.items())
    tx = optimizer(train_cfg, 1e-5, 1000)
    opt_state = jax.eval_shape(tx.init, trained)
    opt_bytes = 0.0
    shapes_to_factor = {x.shape: factors[k] for k, x in params.items()}
    for leaf in jax.tree.leaves(opt_state):
        opt_bytes += _bytes(leaf) / shapes_to_factor.get(leaf.shape, 1)
    n_data = mesh_shape["data"] * mesh_shape["fsdp"]  # the batch splits over data and fsdp
    b = max(train_cfg.batch_size // max(train_cfg.grad_accum, 1) // n_data, 1)
    act = activation_bytes(family, cfg, model_cfg, train_cfg, b, seq_len, use_lora)
    act = act / mesh_shape["tp"]
    total = p_bytes + g_bytes + opt_bytes + act  # grads: the trained params' size and sharding
    return {
        "n_params": n_params,
        "n_trained": sum(math.prod(x.shape) for x in trained.values()),
        "params": p_bytes,
        "grads": g_bytes,
        "optimizer": opt_bytes,
        "activations": act,
        "total": total,
        "per_device_batch": b,
    }


def _layer_key(cfg) -> str:
    for k in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(cfg, k):
            return k
    raise AttributeError(f"{type(cfg).__name__} has no layer count")


def residual_bytes(graphdef: nnx.GraphDef, params, batch: dict) -> int:
    """Bytes of the residuals ``jax.vjp`` of the training loss keeps for the backward pass:
    the linearised function's saved arrays, less those that are its inputs (parameters, the
    batch), which are held anyway. Traced only; nothing runs."""
    from w2s.train.losses import step_loss
    from w2s.train.step import batch_loss

    def saved(p, batch):
        _, pullback = jax.vjp(
            lambda q: batch_loss(graphdef, q, batch, jnp.float32(0.5), step_loss())[0], p
        )
        return jax.tree.leaves(pullback)

    closed = jax.make_jaxpr(saved)(params, batch)
    inputs = {id(v) for v in closed.jaxpr.invars}
    return sum(
        math.prod(v.aval.shape) * jnp.dtype(v.aval.dtype).itemsize
        for v in closed.jaxpr.outvars
        if hasattr(v, "aval") and id(v) not in inputs and not hasattr(v, "val")
    )


def _graph(family, cfg, model_cfg, train_cfg, use_lora: bool, *, layers: int | None = None,
           remat: str | None = None, scan: bool | None = None):
    """(graphdef, abstract params) of the classifier a run trains, optionally with another
    depth, remat policy or layer scan."""
    from w2s.models import Classifier, lora

    c = cfg if layers is None else dataclasses.replace(cfg, **{_layer_key(cfg): layers})

    def build():
        backbone = family.module(
            c,
            dtype=jnp.dtype(model_cfg.compute_dtype),
            param_dtype=jnp.dtype(model_cfg.param_dtype),
            remat=train_cfg.remat if remat is None else remat,
            scan_layers=train_cfg.scan_layers if scan is None else scan,
            rngs=nnx.Rngs(0),
        )
        if use_lora:
            lo = train_cfg.lora
            lora.add(backbone, family, rank=lo.rank, alpha=lo.alpha, groups=list(lo.targets),
                     seed=0)
        return Classifier(backbone, 2, family.pooling)

    return nnx.split(nnx.eval_shape(build))


def _batch(b: int, seq_len: int) -> dict:
    return {
        "input_ids": jax.ShapeDtypeStruct((b, seq_len), jnp.int32),
        "attention_mask": jax.ShapeDtypeStruct((b, seq_len), jnp.int32),
        "targets": jax.ShapeDtypeStruct((b, 2), jnp.float32),
        "labels": jax.ShapeDtypeStruct((b,), jnp.int32),
        "weight": jax.ShapeDtypeStruct((b,), jnp.float32),
    }


def activation_bytes(family, cfg, model_cfg, train_cfg, b: int, seq_len: int,
                     use_lora: bool) -> int:
    """The batch, the saved residuals of the configured model at per-device batch ``b``, and
    the backward pass's working set, counted in layers' worth of residuals without remat (the
    difference between a two- and a one-layer model): one for a scanned loop (its cotangents:
    an unrolled model reuses freed residuals for them), one more under remat (the layer being
    recomputed)."""
    batch = _batch(b, seq_len)
    args = (family, cfg, model_cfg, train_cfg, use_lora)
    total = sum(_bytes(x) for x in batch.values())
    total += residual_bytes(*_graph(*args), batch)
    working = train_cfg.scan_layers + (train_cfg.remat != "none")  # layers' worth, 0 to 2
    if working:
        layer = residual_bytes(*_graph(*args, layers=2, remat="none", scan=False), batch)
        layer -= residual_bytes(*_graph(*args, layers=1, remat="none", scan=False), batch)
        total += working * layer
    return total


def xla_step_bytes(model_cfg, train_cfg, seq_len: int, use_lora: bool = False) -> dict:
    """XLA's memory analysis of the real, donated train step compiled for this machine's
    backend from abstract parameters (one device): what the plan is checked against."""
    from w2s.models import lora
    from w2s.train.losses import step_loss
    from w2s.train.step import make_train_step, optimizer

    hf = {**hf_config(model_cfg.path), **dict(model_cfg.overrides)}
    family = family_for(hf.get("model_type"), model_cfg.path)
    graphdef, params = _graph(family, family.config_from_hf(hf), model_cfg, train_cfg, use_lora)
    labels = lora.trainable_labels(params) if use_lora else None
    tx = optimizer(train_cfg, 1e-5, 1000, labels)
    opt = jax.eval_shape(tx.init, params)
    b = max(train_cfg.batch_size // max(train_cfg.grad_accum, 1), 1)
    step = jax.jit(make_train_step(graphdef, tx, step_loss()), donate_argnums=(0, 1))
    mem = step.lower(params, opt, _batch(b, seq_len), jnp.float32(0.5)).compile()
    mem = mem.memory_analysis()
    out = {
        "arguments": mem.argument_size_in_bytes,
        "outputs": mem.output_size_in_bytes,
        "temporaries": mem.temp_size_in_bytes,
        "aliased": mem.alias_size_in_bytes,
    }
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
    return out


def format_plan(name: str, p: dict, mesh_shape: dict[str, int], device_gib: float | None) -> str:
    gib = 1024**3
    lines = [
        f"memory plan for {name}: {p['n_params'] / 1e9:.2f} B parameters"
        + (f" ({p['n_trained'] / 1e6:.1f} M trained)" if p["n_trained"] < p["n_params"] else "")
        + ", mesh "
        + " ".join(f"{k}={v}" for k, v in mesh_shape.items())
        + f", per-device batch {p['per_device_batch']}",
    ]
    for k in ("params", "grads", "optimizer", "activations", "total"):
        lines.append(f"  {k:<12} {p[k] / gib:8.2f} GiB per device")
    if device_gib:
        verdict = "fits" if p["total"] <= device_gib * gib else "does NOT fit"
        lines.append(f"  {verdict} in {device_gib:g} GiB")
    return "\n".join(lines)


def print_plan(cfg) -> None:
    from w2s.checks import check_config

    check_config(cfg)  # a plan is for another machine: its backend is not checked here
    mesh = {k: max(int(cfg.mesh[k]), 1) for k in ("data", "fsdp", "tp")}
    lo = cfg.train.lora
    p = plan(cfg.strong, cfg.train, mesh, int(cfg.task.max_length),
             use_lora=lo.rank > 0 and "strong" in lo.models)
    print(format_plan(cfg.strong.name, p, mesh, 80.0))
    if cfg.train.remat != "none" and not cfg.train.scan_layers:
        print(
            "  note: the activations assume each layer is recomputed in turn; XLA keeps that "
            "order inside a scan, so set train.scan_layers=true with train.remat"
        )
