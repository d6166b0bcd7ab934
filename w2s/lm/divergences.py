"""Token-level divergences between a frozen teacher LM and a student LM, averaged over tokens.

``q = softmax(teacher_logits / T)`` (detached: the teacher is never trained), ``p =
softmax(student_logits / T)``, both over the vocabulary at every position; ``mask`` [B, S]
marks the positions that count (response tokens). Natural logs; each kind is multiplied by
``T**2`` (Hinton et al. 2015) so its gradient scale does not shrink with the temperature.

- ``fkl``: KL(q ‖ p), mass-covering (sequence-level KD's token counterpart).
- ``rkl``: KL(p ‖ q), mode-seeking (MiniLLM).
- ``js``: the β-skewed Jensen–Shannon divergence of GKD, ``β KL(q ‖ m) + (1 − β) KL(p ‖ m)``
  with ``m = β q + (1 − β) p``; ``β = 0.5`` is the symmetric JSD, within [0, ln 2]. β is the
  teacher's weight, strictly inside (0, 1): at the ends the divergence vanishes, so use
  ``fkl`` / ``rkl`` there.
- ``tv``: total variation ``Σ |p − q| / 2``.
- ``skew_fkl``: KL(q ‖ λ q + (1 − λ) p), ``skew_rkl``: KL(p ‖ λ p + (1 − λ) q) (DistiLLM);
  λ = 0 gives fkl / rkl, a small λ bounds the loss where one side has no mass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TOKEN_DIVERGENCES = ("fkl", "rkl", "js", "tv", "skew_fkl", "skew_rkl")


def check_token_divergence(kind: str, temperature: float, beta: float, skew: float) -> None:
    """Fail outside jit, with the setting's name, on what ``token_divergence`` would reject."""
    if kind not in TOKEN_DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; options: {', '.join(TOKEN_DIVERGENCES)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if kind == "js" and not 0 < beta < 1:
        raise ValueError(f"js needs 0 < beta < 1 (got {beta}); beta 0 or 1 is fkl or rkl")
    if kind.startswith("skew_") and not 0 <= skew < 1:
        raise ValueError(f"{kind} needs 0 <= skew < 1, got {skew}")


def _kl(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """KL(a ‖ b) over the last axis from log-probabilities; terms with a = 0 contribute 0."""
    a = jnp.exp(log_a)
    return jnp.sum(jnp.where(a > 0, a * (log_a - log_b), 0.0), axis=-1)


def _log_mix(w: float, log_a: jax.Array, log_b: jax.Array) -> jax.Array:
    """log(w a + (1 − w) b), computed in log space."""
    if w == 0:
        return log_b
    return jnp.logaddexp(jnp.log(w) + log_a, jnp.log1p(-w) + log_b)


def per_token(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    kind: str = "fkl",
    temperature: float = 1.0,
    *,
    beta: float = 0.5,
    skew: float = 0.1,
) -> jax.Array:
    """The divergence at every position, [..., V] logits -> [...] (times ``T**2``)."""
    check_token_divergence(kind, temperature, beta, skew)
    f32 = jnp.promote_types(student_logits.dtype, jnp.float32)
    log_p = jax.nn.log_softmax(student_logits.astype(f32) / temperature, axis=-1)
    log_q = jax.lax.stop_gradient(
        jax.nn.log_softmax(teacher_logits.astype(f32) / temperature, axis=-1)
    )
    if kind == "fkl":
        d = _kl(log_q, log_p)
    elif kind == "rkl":
        d = _kl(log_p, log_q)
    elif kind == "js":
        log_m = _log_mix(beta, log_q, log_p)
        d = beta * _kl(log_q, log_m) + (1 - beta) * _kl(log_p, log_m)
    elif kind == "tv":
        d = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
    elif kind == "skew_fkl":
        d = _kl(log_q, _log_mix(skew, log_q, log_p))
    else:  # skew_rkl
        d = _kl(log_p, _log_mix(skew, log_p, log_q))
    return d * temperature**2


def token_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array,
    kind: str = "fkl",
    temperature: float = 1.0,
    *,
    beta: float = 0.5,
    skew: float = 0.1,
) -> jax.Array:
    """Mean of ``per_token`` over the positions where ``mask`` [B, S] is set (a scalar)."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"token-level distillation needs one vocabulary: student logits have "
            f"{student_logits.shape[-1]} entries, the teacher's {teacher_logits.shape[-1]}"
        )
    d = per_token(student_logits, teacher_logits, kind, temperature, beta=beta, skew=skew)
    m = mask.astype(d.dtype)
    return jnp.sum(d * m) / jnp.maximum(jnp.sum(m), 1.0)
