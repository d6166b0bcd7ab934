"""Scaled dot-product attention for right-padded batches, shared by every family.

With right padding, each row's mask is fully given by its length, which lets the same call
use XLA on any backend or cuDNN's fused kernel on NVIDIA GPUs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    lengths: jax.Array,
    *,
    causal: bool,
    implementation: str = "xla",
    scale: float | None = None,
) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] (N a multiple of K: grouped-query), lengths [B] -> [B,T,N,H].

    Logits and softmax run in float32 whatever the compute dtype.
    """
    if implementation == "cudnn":
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
    scale = 1.0 / h**0.5 if scale is None else scale
    valid = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, None, :]  # [B,1,1,1,S]
    if causal:
        valid = valid & (jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])[None, None, None]
    # Grouped heads: q [B,T,K,G,H] against k/v [B,S,K,H]; einsums keep the [B,T,heads] layout
    # of the projections, so no transposes are materialised around the attention.
    qg = q.reshape(b, t, kv, n // kv, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", qg, k, preferred_element_type=jnp.float32) * scale
    logits = logits + jnp.where(valid, 0.0, -1e30).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskh->btkgh", probs, v)
    return out.reshape(b, t, n, h)
