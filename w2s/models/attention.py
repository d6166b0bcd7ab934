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
    q_positions: jax.Array | None = None,
) -> jax.Array:
    """q [B,T,N,H], k/v [B,S,K,H] (N a multiple of K: grouped-query), lengths [B] -> [B,T,N,H].

    Key ``j`` is visible to row ``b`` iff ``j < lengths[b]`` and, when causal, ``j`` is at most
    the query's position: ``0..T-1`` by default, ``q_positions`` [B,T] for queries placed into
    a longer key cache (decoding; XLA path only). Logits and softmax run in float32 whatever
    the compute dtype. ``scale`` may be traced (a per-layer scale inside scanned layers).
    """
    if q_positions is not None and implementation != "xla":
        raise ValueError("attention with query positions (a KV cache) runs on the xla path only")
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
    if causal:  # row r of the G*T rows is query r % T
        pos = jnp.arange(t)[None] if q_positions is None else q_positions  # [1 or B, T]
        query_pos = jnp.tile(pos, (1, g))  # [1 or B, G*T]
        valid = valid & (query_pos[:, None, :, None] >= jnp.arange(s))
    logits = logits + jnp.where(valid, 0.0, -1e30).astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.matmul(probs, vh)  # [B,K,G*T,H]
    return out.reshape(b, kv, g, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def attend_cached(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    cache: tuple[jax.Array, jax.Array],
    positions: jax.Array,
    lengths: jax.Array,
    *,
    scale: float | jax.Array | None = None,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Write this call's k/v [B,T,K,H] into the cache (k, v [B,C,K,H]) at ``positions`` [B,T],
    then attend causally over the cache, whose valid keys are ``j < lengths[b]``.

    Right padding makes each row's cache contiguous: a prompt of length L fills slots
    ``0..L-1`` and decoding writes slot ``L + t`` (overwriting the prompt's pad slots), so
    ``lengths = position + 1`` is the whole mask for a decoded token.
    """
    kc, vc = cache
    rows = jnp.arange(k.shape[0])[:, None]
    kc = kc.at[rows, positions].set(k.astype(kc.dtype))
    vc = vc.at[rows, positions].set(v.astype(vc.dtype))
    out = attend(q, kc, vc, lengths, causal=True, scale=scale, q_positions=positions)
    return out, (kc, vc)
