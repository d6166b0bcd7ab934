"""Layers shared by the families: a token-flattened dense layer and float32 norms.

``Dense`` applies its matmul to ``[tokens, features]``: XLA:CPU runs a 2-D matmul about 1.8x
faster than the same product written over ``[batch, seq, features]`` (forward and backward,
measured on MiniLM shapes), while on accelerators the two compile to the same kernel.
Norms compute in float32 whatever the compute dtype (float64 in float64 reference models): bf16
cannot hold small variances.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.lora import delta as lora_delta

# HF ``hidden_act`` / ``activation_function`` names. BERT's "gelu" is the exact erf form,
# GPT-2's "gelu_new" the tanh approximation. The exact form is written with erf, as torch does:
# jax.nn.gelu(approximate=False) lowers through erfc, which XLA:CPU expands into a slower
# two-branch polynomial. Each is recomputed in the backward pass from its input alone
# (``jax.checkpoint``): an elementwise function is cheap to redo, and otherwise the backward
# pass keeps its intermediates (three [B, S, 4H] arrays for GPT-2's tanh form), which XLA can
# fuse away in an unrolled model but not across a scanned layer's boundary.
_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (2.0**-0.5))),
    "gelu_new": partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": partial(jax.nn.gelu, approximate=True),
    "gelu_fast": partial(jax.nn.gelu, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}
ACTIVATIONS = {name: jax.checkpoint(fn) for name, fn in _ACTIVATIONS.items()}


class Dense(nnx.Linear):
    """A Linear over flattened tokens; with a LoRA adapter attached (``w2s.models.lora``) it
    adds the adapter's low-rank term."""

    def __call__(self, x: jax.Array) -> jax.Array:
        lead = x.shape[:-1]
        x2d = x.reshape(-1, x.shape[-1])
        y = super().__call__(x2d)
        if getattr(self, "lora", None) is not None:
            y = y + lora_delta(self, x2d.astype(y.dtype))
        return y.reshape(*lead, y.shape[-1])


def dense_einsum(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, dtype) -> jax.Array:
    """``x [..., H] @ kernel [H, *out] + bias [*out]`` as one 2-D matmul (fused projections)."""
    lead, out = x.shape[:-1], kernel.shape[1:]
    y = x.reshape(-1, x.shape[-1]).astype(dtype) @ kernel.reshape(kernel.shape[0], -1).astype(dtype)
    if bias is not None:
        y = y + bias.reshape(-1).astype(dtype)
    return y.reshape(*lead, *out)


def norm_dtype(x: jax.Array):
    """float32, or float64 for a float64 model (reference runs): never below float32."""
    return jnp.promote_types(x.dtype, jnp.float32)


class LayerNorm(nnx.Module):
    def __init__(self, size: int, eps: float, *, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((size,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        acc = norm_dtype(x)
        x = x.astype(acc)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(acc) + self.bias[...].astype(acc)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, *, dtype, param_dtype):
        self.scale = nnx.Param(jnp.ones((size,), param_dtype))
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        acc = norm_dtype(x)
        xf = x.astype(acc)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return (xf * self.scale[...].astype(acc)).astype(self.dtype)
