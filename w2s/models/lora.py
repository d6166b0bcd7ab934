"""LoRA adapters on a backbone's projections (Hu et al., 2021): ``y = x W + (alpha / r) x A B``.

Each targeted projection gets an ``nnx.LoRA`` submodule (factors ``A [in, r]``, random, and
``B [r, out]``, zero, as ``nnx.LoRAParam``), so an adapted model starts equal to its base.
With scanned layers the factors carry the same leading layer axis as the kernels. A LoRA run
trains the factors and the classifier head; the optimizer holds state for those alone and the
base weights get no update (their gradients are never used, so XLA does not compute them).
After training, :func:`merge` folds ``(alpha / r) A B`` into the kernels: predictions, kept
weights and everything downstream see a plain model of the base architecture.

Dropout (``train.lora.dropout`` = p > 0, as in Hu et al. and PEFT): in training steps only, the
adapter's input is dropped, ``y = x W + b + (alpha / r) dropout(x) A B`` (inverted: kept entries
scaled by ``1 / (1 - p)``). The rate is a static setting of the adapted module; the train step
gets a key (:func:`dropout_key`, from the run's seed and the step number) and
:func:`set_dropout_keys` hangs one key per adapter (one per layer when scanned) on the model it
merges for that step. Those keys are never parameters: not in the optimizer state, the
gradients or checkpoints. Without a key (evaluation, prediction, labelling, merged weights) an
adapter is deterministic.

Which projections: each family names its attention and MLP projections (``Family.lora_targets``,
regexes over module paths); ``train.lora.targets`` picks the groups.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

GROUPS = ("attention", "mlp")
_DROPOUT_STREAM = zlib.crc32(b"lora-dropout")  # keeps dropout keys apart from the seed's others


class DropoutKey(nnx.Variable):
    """One adapter's dropout key for one train step (``[L]`` keys for scanned layers); set by
    :func:`set_dropout_keys` on the model a step merges, never part of the parameters."""


def _targets(family, groups) -> list[re.Pattern]:
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"train.lora.targets: unknown group(s) {unknown}; use {', '.join(GROUPS)}")
    table = dict(family.lora_targets)
    return [re.compile(table[g]) for g in groups]


def _out_dims(module) -> int:
    """How many trailing kernel axes are outputs: 1 for a Linear, more for a fused Einsum."""
    if isinstance(module, nnx.Einsum):
        kernel_spec = module.einsum_str.split("->")[0].split(",")[1]
        return len(kernel_spec) - 1
    return 1


def targeted(backbone, family, groups) -> Iterator[tuple[str, nnx.Module]]:
    """(path, module) of every projection the groups target, in graph order."""
    patterns = _targets(family, groups)
    for path, module in nnx.iter_graph(backbone):
        if not isinstance(module, nnx.Linear | nnx.Einsum):
            continue
        name = "/".join(map(str, path))
        if any(p.search(name) for p in patterns):
            yield name, module


def check_dropout(dropout: float) -> float:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"train.lora.dropout must be in [0, 1), not {dropout}")
    return float(dropout)


def add(
    backbone, family, *, rank: int, alpha: float, groups, seed: int, dropout: float = 0.0
) -> int:
    """Attach adapters in place; returns how many projections got one. ``seed`` draws A;
    ``dropout`` is the rate on the adapters' input in train steps (0: none)."""
    if rank < 1:
        raise ValueError(f"train.lora.rank must be >= 1 to add adapters, not {rank}")
    dropout = check_dropout(dropout)
    n = 0
    for name, module in targeted(backbone, family, groups):
        kernel = module.kernel.get_value()  # an array, or its shape for an abstract model
        n_out = _out_dims(module)
        lead = kernel.shape[: kernel.ndim - 1 - n_out]  # the scanned layer axis, if any
        d_in = kernel.shape[len(lead)]
        d_out = math.prod(kernel.shape[len(lead) + 1 :])
        lora = nnx.LoRA(d_in, rank, d_out, dtype=module.dtype, rngs=nnx.Rngs(0))
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))
        bound = 1.0 / d_in**0.5  # PEFT's default: Kaiming-uniform with a = sqrt(5)
        lora.lora_a = nnx.LoRAParam(
            jax.random.uniform(key, (*lead, d_in, rank), jnp.float32, -bound, bound)
        )
        lora.lora_b = nnx.LoRAParam(jnp.zeros((*lead, rank, d_out), jnp.float32))
        module.lora = lora
        module.lora_scale = float(alpha) / rank
        if dropout > 0:  # absent at 0: the graph (and its compiled step) is the plain one
            module.lora_dropout = dropout
        n += 1
    if n == 0:
        raise ValueError(f"train.lora.targets={list(groups)} matched no projection")
    return n


def delta(module, x2d: jax.Array) -> jax.Array | None:
    """``(alpha / r) x A B`` for a projection's ``[tokens, in]`` input, or None without adapter."""
    lora = getattr(module, "lora", None)
    if lora is None:
        return None
    dt = x2d.dtype
    rate = getattr(module, "lora_dropout", 0.0)
    key = getattr(module, "lora_dropout_key", None)
    if rate > 0 and key is not None:  # a train step: drop the adapter's input
        x2d = jnp.where(dropout_mask(key.get_value(), rate, x2d.shape), x2d / (1.0 - rate), 0)
        x2d = x2d.astype(dt)
    h = x2d @ lora.lora_a[...].astype(dt)
    return (h @ lora.lora_b[...].astype(dt)) * jnp.asarray(module.lora_scale, dt)


def dropout_mask(key: jax.Array, rate: float, shape) -> jax.Array:
    """The kept entries (True) of an adapter input of ``shape`` under ``key``."""
    return jax.random.bernoulli(key, 1.0 - rate, shape)


def has_dropout(model) -> bool:
    return any(getattr(m, "lora_dropout", 0.0) > 0 for _, m in nnx.iter_graph(model))


def dropout_key(seed, step) -> jax.Array:
    """The dropout key of train step ``step`` of the run seeded ``seed`` (both may be traced)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _DROPOUT_STREAM), step)


def set_dropout_keys(model, key: jax.Array) -> int:
    """Give every adapter with dropout its own key derived from ``key`` (by module path; split
    over the layer axis when scanned); returns how many. For the model a train step merges."""
    n = 0
    for path, module in list(nnx.iter_graph(model)):
        if getattr(module, "lora_dropout", 0.0) <= 0 or getattr(module, "lora", None) is None:
            continue
        name = "/".join(map(str, path))
        k = jax.random.fold_in(key, zlib.crc32(name.encode()))
        lead = module.lora.lora_a.get_value().shape[:-2]  # the scanned layer axis, if any
        module.lora_dropout_key = DropoutKey(jax.random.split(k, lead) if lead else k)
        n += 1
    return n


def has_adapters(model) -> bool:
    return any(isinstance(m, nnx.LoRA) for _, m in nnx.iter_graph(model))


def trainable_labels(params):
    """``"train"`` for adapter factors and the head, ``"frozen"`` for the rest (optax labels)."""

    def label(path, _):
        keys = [getattr(k, "key", getattr(k, "name", k)) for k in path]
        return "train" if ("lora" in keys or (keys and keys[0] == "head")) else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


def merge(model):
    """The model with every adapter folded into its kernel (in float32, then the kernel's
    dtype) and removed: the base architecture, as a plain checkpoint would load."""
    for _, module in list(nnx.iter_graph(model)):
        lora = getattr(module, "lora", None)
        if lora is None or not isinstance(lora, nnx.LoRA):
            continue
        kernel = module.kernel[...]
        ab = jnp.matmul(lora.lora_a[...], lora.lora_b[...]) * module.lora_scale
        merged = kernel.astype(jnp.float32) + ab.reshape(kernel.shape)
        module.kernel.set_value(merged.astype(kernel.dtype))
        del module.lora
        del module.lora_scale
        for attr in ("lora_dropout", "lora_dropout_key"):
            if hasattr(module, attr):
                delattr(module, attr)
    return model
