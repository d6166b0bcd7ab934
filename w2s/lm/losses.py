"""Teacher-forced losses of a causal LM over response tokens.

Position ``t``'s logits predict token ``t + 1``, so a batch's ``loss_mask`` [B, S] (1 at
response tokens, ``w2s.lm.data.sft_tokenize``) selects the targets ``input_ids[:, 1:]`` where
``loss_mask[:, 1:]`` is set, and the logits ``[:, :-1]`` that predict them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from w2s.lm.divergences import token_divergence


def target_logprobs(logits: jax.Array, input_ids: jax.Array) -> jax.Array:
    """log p(input_ids[:, t + 1] | ..t) for t < S - 1: [B, S, V] -> [B, S - 1], float32."""
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]


def response_nll(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood per response token over the batch (SFT's loss)."""
    m = loss_mask[:, 1:].astype(jnp.float32)
    return -jnp.sum(target_logprobs(logits, input_ids) * m) / jnp.maximum(jnp.sum(m), 1.0)


def response_targets(input_ids, loss_mask, min_size: int = 64) -> dict:
    """Where SFT's loss is, as flat host arrays: ``target_index`` [T] into the batch's [B * S]
    positions whose logits predict a response token, ``target_ids`` [T] those tokens and
    ``target_weight`` [T] (0 on padding). T is the count rounded up to a power of two (at least
    ``min_size``, at most B * S), so a run compiles one step per size class, not per batch."""
    ids, m = np.asarray(input_ids), np.asarray(loss_mask)[:, 1:]
    b, t = np.nonzero(m)
    n, cap = len(b), ids.shape[0] * ids.shape[1]
    size = min(cap, max(min_size, 1 << max(n - 1, 0).bit_length()))
    index, target, weight = (np.zeros(size, np.int32), np.zeros(size, np.int32),
                             np.zeros(size, np.float32))
    index[:n], target[:n], weight[:n] = b * ids.shape[1] + t, ids[b, t + 1], 1.0
    return {"target_index": index, "target_ids": target, "target_weight": weight}


def gathered_logits(lm, batch: dict) -> jax.Array:
    """Logits [T, V] only at ``response_targets``' positions: the LM head (the largest matmul
    of a small LM, and its backward) runs on T rows instead of B * S, most of which are prompt
    or padding."""
    hidden = lm.backbone(batch["input_ids"], batch["attention_mask"])
    b, s, h = hidden.shape
    return lm.logits(hidden.reshape(b * s, h)[batch["target_index"]]).astype(jnp.float32)


def gathered_nll(logits: jax.Array, batch: dict) -> jax.Array:
    """``response_nll`` from ``gathered_logits``: the same value."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, batch["target_ids"][:, None], axis=-1)[:, 0]
    w = batch["target_weight"]
    return -jnp.sum(tok * w) / jnp.maximum(jnp.sum(w), 1.0)


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
