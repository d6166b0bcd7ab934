"""Scaled dot-product attention for right-padded batches, shared by every family.

With right padding, each row's mask is fully given by its length, which lets the same call
use XLA on any backend or cuDNN's fused kernel on NVIDIA GPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn")
CUDNN_DTYPES = ("bfloat16", "float16")


def check_attention(
    implementation: str, compute_dtypes: dict[str, str], backend: str | None = None
) -> None:
    """Refuse, before anything is built, an attention choice that cannot run: cuDNN's fused
    kernel takes only bf16/fp16 inputs and runs only on NVIDIA GPUs. ``compute_dtypes`` maps a
    config prefix (``strong``) to its compute dtype; ``backend`` None checks the dtypes alone
    (a dry run plans for a machine it is not on)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"train.attention={implementation!r} unknown; use {' or '.join(IMPLEMENTATIONS)}"
        )
    if implementation != "cudnn":
        return
    bad = [f"{k}.compute_dtype={v}" for k, v in compute_dtypes.items() if v not in CUDNN_DTYPES]
    if bad:
        raise ValueError(
            f"train.attention=cudnn needs bfloat16 or float16 compute, but {', '.join(bad)}; "
            "set them to bfloat16 (train=gpu does) or use train.attention=xla"
        )
    if backend is not None and backend != "gpu":
        raise ValueError(
            f"train.attention=cudnn runs only on an NVIDIA GPU, and JAX's backend here is "
            f"{backend!r}; use train.attention=xla"
        )


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array,
    *,
    causal: bool,
    implementation: str = "xla",
    scale: float | jax.Array | None = None,
) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] (N a multiple of K: grouped-query), lengths [B] -> [B,T,N,H].

    Logits and softmax run in float32 whatever the compute dtype. ``scale`` may be traced
    (a per-layer scale inside scanned layers).
    """
    if implementation == "cudnn":
        if scale is not None and not isinstance(scale, int | float):  # cuDNN takes a static one
            q, scale = q * jnp.asarray(scale, q.dtype), 1.0
        return jax.nn.dot_product_attention(
            q,
            k,
            v,
            scale=scale,
            is_causal=causal,
            key_value_seq_lengths=lengths.astype(jnp.int32),
            implementation="cudnn",
        )
    if implementation != "xla":
        raise ValueError(f"attention implementation '{implementation}' unknown; use xla or cudnn")
    b, t, n, h = q.shape
    s, kv = k.shape[1], k.shape[2]
    g = n // kv
    scale = 1.0 / h**0.5 if scale is None else scale
    # Heads-major layout: q [B,K,G*T,H] against k/v [B,K,S,H] as plain batched matmuls. XLA:CPU
    # turns einsums whose batch dims are not leading into slow dots plus layout copies; one
    # copy in and one out is cheaper. Pre-scaling q saves a pass over the [T,S] logits.
    qh = (q * jnp.asarray(scale, q.dtype)).reshape(b, t, kv, g, h)
    qh = qh.transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, h)
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    logits = jnp.matmul(qh, kh.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    valid = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # [B,1,1,S]
    if causal:  # row r of the G*T rows is query position r % T
        query_pos = jnp.tile(jnp.arange(t), g)
        valid = valid & (query_pos[:, None] >= jnp.arange(s)[None, :])[None, None]
    logits = logits + jnp.where(valid, 0.0, -1e30).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.matmul(probs, vh)  # [B,K,G*T,H]
    return out.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
