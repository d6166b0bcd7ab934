"""Per-example divergences between a frozen teacher (the weak model) and the student.

Used by live distillation and the combined objective. Conventions:

- ``teacher_probs`` are already tempered by the caller (:func:`temper`) and are treated as
  constants (``stop_gradient``): the weak model is never trained by these losses.
- Student probabilities are ``softmax(student_logits / T)``.
- The result is multiplied by ``T**2`` (Hinton et al. 2015) unless ``scale_by_t2=False``: the
  gradient of a tempered KL shrinks like ``1 / T**2``, so the factor keeps the distillation
  term's gradient scale comparable across temperatures and against a ``T = 1`` auxiliary term.
  The same factor is applied to every kind so that switching kinds does not change the scale
  rule. At ``T = 1`` it is a no-op.
- Teacher probabilities may be exactly 0 or 1 (hard labels): ``0 * log 0`` is taken as 0, and
  ``log q`` is floored at ``log(PROB_FLOOR)`` where a kind needs the log of a teacher zero
  (reverse KL), which bounds the penalty for mass the teacher rules out.

All logs are natural, so ``js`` lies in ``[0, ln 2]`` (times ``T**2``) and ``tv`` in ``[0, 1]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DIVERGENCES = ("fkl", "rkl", "js", "tv")
PROB_FLOOR = 1e-8


def upcast(x: jax.Array) -> jax.Array:
    """At least float32 (bf16 logits are upcast; float64 stays float64 for gradient checks)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def xlogx(q: jax.Array) -> jax.Array:
    """Elementwise ``q log q`` with ``0 log 0 = 0`` (no NaN in value or gradient at 0)."""
    pos = q > 0
    return jnp.where(pos, q * jnp.log(jnp.where(pos, q, 1.0)), 0.0)


def entropy(probs: jax.Array) -> jax.Array:
    """Shannon entropy (nats) of each row of ``probs`` [B, C] -> [B]."""
    return -jnp.sum(xlogx(upcast(probs)), axis=-1)


def temper(teacher_logits: jax.Array, temperature: float | jax.Array = 1.0) -> jax.Array:
    """Teacher probabilities ``softmax(logits / T)``, detached: the teacher is frozen."""
    z = upcast(teacher_logits)
    return jax.lax.stop_gradient(jax.nn.softmax(z / temperature, axis=-1))


def check_divergence(kind: str, temperature: float | None = None) -> None:
    """Fail early, outside jit, on a kind or temperature :func:`divergence` would reject."""
    if kind not in DIVERGENCES:
        raise ValueError(f"unknown divergence {kind!r}; options: {', '.join(DIVERGENCES)}")
    if isinstance(temperature, int | float) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def divergence(
    student_logits: jax.Array,
    teacher_probs: jax.Array,
    kind: str = "fkl",
    temperature: float | jax.Array = 1.0,
    *,
    scale_by_t2: bool = True,
) -> jax.Array:
    """``D(teacher, student)`` per example [B] for ``kind`` in fkl | rkl | js | tv.

    fkl = KL(q || p), rkl = KL(p || q), js = (KL(p || m) + KL(q || m)) / 2 with m = (p + q) / 2,
    tv = sum |p - q| / 2, where q = teacher, p = softmax(student_logits / T).
    """
    check_divergence(kind, temperature)
    q = jax.lax.stop_gradient(upcast(teacher_probs))
    log_p = jax.nn.log_softmax(upcast(student_logits) / temperature, axis=-1)
    if kind == "fkl":
        # sum q log q - sum q log p; rows where q = 0 contribute 0 even if log p = -inf
        cross = jnp.where(q != 0, q * log_p, 0.0)
        d = jnp.sum(xlogx(q) - cross, axis=-1)
    elif kind == "rkl":
        p = jnp.exp(log_p)
        log_q = jnp.log(jnp.maximum(q, PROB_FLOOR))
        d = jnp.sum(p * (log_p - log_q), axis=-1)
    elif kind == "js":
        p = jnp.exp(log_p)
        m = 0.5 * (p + q)
        log_m = jnp.log(jnp.maximum(m, jnp.finfo(m.dtype).tiny))  # m >= p / 2 > 0
        kl_pm = jnp.sum(p * (log_p - log_m), axis=-1)
        kl_qm = jnp.sum(xlogx(q) - jnp.where(q != 0, q * log_m, 0.0), axis=-1)
        d = 0.5 * (kl_pm + kl_qm)
    else:  # tv
        d = 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - q), axis=-1)
    if scale_by_t2:
        d = d * jnp.square(temperature)
    return d
