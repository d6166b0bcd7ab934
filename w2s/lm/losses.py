"""Teacher-forced losses of a causal LM over response tokens.

Position ``t``'s logits predict token ``t + 1``, so a batch's ``loss_mask`` [B, S] (1 at
response tokens, ``w2s.lm.data.sft_tokenize``) selects the targets ``input_ids[:, 1:]`` where
``loss_mask[:, 1:]`` is set, and the logits ``[:, :-1]`` that predict them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from w2s.lm.divergences import token_divergence


def target_logprobs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """log p(input_ids[:, t + 1] | ..t) for t < S - 1: [B, S, V] -> [B, S - 1], float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]


def response_nll(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood per response token over the batch (SFT's loss)."""
    m = loss_mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(target_logprobs(logits, input_ids) * m) / jnp.maximum(jnp.sum(m), 1.0)


def row_nll(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Each row's mean NLL per response token [B] (the reference NLL metric)."""
    m = loss_mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(target_logprobs(logits, input_ids) * m, 1) / jnp.maximum(jnp.sum(m, 1), 1.0)


def response_kd(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    loss_mask: jax.Array,
    kind: str,
    temperature: float,
    *,
    beta: float = 0.5,
    skew: float = 0.1,
) -> jax.Array:
    """Token-level distillation at the positions that predict response tokens."""
    return token_divergence(
        student_logits[:, :-1],
        teacher_logits[:, :-1],
        loss_mask[:, 1:],
        kind,
        temperature,
        beta=beta,
        skew=skew,
    )
