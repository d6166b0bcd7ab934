"""Pairwise preference losses: Bradley–Terry reward modelling and DPO / IPO on response tokens.

A pair is (prompt, chosen, rejected). Reward models score each side, ``r_c`` and ``r_r``; the
Bradley–Terry model says P(chosen ≻ rejected) = σ(r_c − r_r), and its loss is
``−log σ(r_c − r_r)``, or with a soft target p (a weak reward model's preference probability)
the cross-entropy ``−p log σ(d) − (1 − p) log σ(−d)``.

DPO (Rafailov et al. 2023) compares the policy π with a frozen reference π_ref through
``h = (log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))``, log-probabilities summed over
response tokens: the loss is ``−log σ(β h)``; with label smoothing ε (conservative DPO)
``−(1 − ε) log σ(β h) − ε log σ(−β h)``; IPO (Azar et al. 2023) is ``(h − 1/(2β))²``. With
π = π_ref, h = 0 and the DPO loss is log 2. Every loss is a mean over pairs, in float32 (or
the inputs' wider dtype).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from w2s.lm.losses import target_logprobs

DPO_KINDS = ("sigmoid", "ipo")


def bradley_terry(r_chosen: jax.Array, r_rejected: jax.Array, target=None) -> jax.Array:
    """Mean BT loss over pairs; ``target`` (P(chosen ≻ rejected) per pair) makes it soft."""
    d = r_chosen - r_rejected
    if target is None:
        return -jnp.mean(jax.nn.log_sigmoid(d))
    return -jnp.mean(target * jax.nn.log_sigmoid(d) + (1 - target) * jax.nn.log_sigmoid(-d))


def sequence_logprob(logits: jax.Array, input_ids: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Each row's log-probability of its response tokens (``loss_mask`` = 1 there), summed
    [B]: prompt and pad positions do not count."""
    m = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(target_logprobs(logits, input_ids) * m, axis=1)


def check_dpo(kind: str, beta: float, label_smoothing: float) -> None:
    if kind not in DPO_KINDS:
        raise ValueError(f"DPO loss {kind!r} unknown; use {', '.join(DPO_KINDS)}")
    if not beta > 0:
        raise ValueError(f"DPO needs beta > 0, got {beta}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")


def dpo(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    beta: float,
    *,
    label_smoothing: float = 0.0,
    kind: str = "sigmoid",
    weight: jax.Array | None = None,
) -> jax.Array:
    """Mean DPO (``sigmoid``) or IPO (``ipo``) loss over pairs from summed response log-probs;
    ``weight`` [B] (0 for a batch's padding pairs) makes it a weighted mean."""
    check_dpo(kind, beta, label_smoothing)
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "ipo":
        per_pair = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        eps = label_smoothing
        per_pair = -((1 - eps) * jax.nn.log_sigmoid(beta * h) + eps * jax.nn.log_sigmoid(-beta * h))
    if weight is None:
        return jnp.mean(per_pair)
    w = weight.astype(per_pair.dtype)
    return jnp.sum(per_pair * w) / jnp.maximum(jnp.sum(w), 1.0)


def pairwise_accuracy(r_chosen, r_rejected) -> jax.Array:
    """Share of pairs scored in the right order; ties count half."""
    d = r_chosen - r_rejected
    return jnp.mean(jnp.where(d > 0, 1.0, jnp.where(d == 0, 0.5, 0.0)))
