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
            q, k, v, scale=scale, is_causal=causal, key_value_seq_lengths=lengths.astype(jnp.int32),
            implementation="cudnn",
        )
    if implementation != "xla":
        raise ValueError(f"attention implementation '{implementation}' unknown; use xla or cudnn")
    t, s = q.shape[1], k.shape[1]
    mask = (jnp.arange(s)[None, :] < lengths[:, None])[:, None, None, :]  # [B,1,1,S]
    if causal:
        mask = mask & (jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])[None, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale, implementation="xla")
