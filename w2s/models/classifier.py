"""Backbone + pooling + a zero-initialised linear head: the model every run trains.

Zero init makes the untrained classifier predict the uniform distribution, so a run's
starting point depends only on the pretrained weights, not on the head's seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

POOLINGS = ("last", "cls", "mean")


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
    """[B,S,H] -> [B,H]. ``last`` is the last non-pad token of a right-padded row."""
    if pooling == "last":
        last = jnp.sum(attention_mask, axis=1).astype(jnp.int32) - 1
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = attention_mask[..., None].astype(jnp.float32)
        return jnp.sum(hidden.astype(jnp.float32) * m, axis=1) / jnp.maximum(
            jnp.sum(m, axis=1), 1.0
        )
    raise ValueError(f"pooling '{pooling}' unknown; use one of {POOLINGS}")


class Classifier(nnx.Module):
    def __init__(self, backbone: nnx.Module, num_labels: int, pooling: str):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}' unknown; use one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = nnx.Linear(
            backbone.config.hidden_size,
            num_labels,
            kernel_init=nnx.initializers.zeros,
            bias_init=nnx.initializers.zeros,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            rngs=nnx.Rngs(0),
        )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Logits [B, num_labels] in float32."""
        hidden = self.backbone(input_ids, attention_mask)
        return self.head(pool(hidden, attention_mask, self.pooling).astype(jnp.float32))
