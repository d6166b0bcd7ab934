"""Coefficient schedules over training progress, for the losses' mixing weights.

Every schedule is a function of ``step_frac`` (progress through training in [0, 1]) that the
trainer passes as a traced scalar inside a jitted step, so branches on it use ``jnp.where``;
the schedule's *name* is static and chosen in Python.

Two families share one knob, ``warmup_frac``:

- logconf's confidence coefficient ``c(t)`` (:func:`logconf_coef`), warm-ups ``step`` and
  ``linear``;
- the combined objective's ``alpha(t)`` (:func:`alpha_at`), schedules ``constant``, ``linear``,
  ``step`` and ``cosine``.

``linear`` and ``cosine`` rise over the first ``warmup_frac`` of training and then hold their
maximum; ``warmup_frac = 1`` spreads them over the whole run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WARMUPS = ("step", "linear")
ALPHA_SCHEDULES = ("constant", "linear", "step", "cosine")


def _as_float(x: jax.Array | float) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(float)


def ramp(step_frac: jax.Array | float, warmup_frac: jax.Array | float) -> jax.Array:
    """``min(t / warmup_frac, 1)``, clipped to [0, 1]; 1 everywhere when ``warmup_frac <= 0``."""
    t = _as_float(step_frac)
    w = jnp.asarray(warmup_frac)
    safe_w = jnp.where(w > 0, w, 1.0)  # no 0/0 even in the branch that is not taken
    return jnp.where(w > 0, jnp.clip(t / safe_w, 0.0, 1.0), 1.0)


def step_warmup(step_frac: jax.Array | float, warmup_frac: jax.Array | float) -> jax.Array:
    """The reference logconf warm-up: ``t`` while ``t <= warmup_frac``, then 1.

    It ramps to ``warmup_frac`` and then jumps to 1; kept as written in Burns et al.'s code so
    that their numbers can be reproduced.
    """
    t = _as_float(step_frac)
    return jnp.where(t <= warmup_frac, t, jnp.ones_like(t))


def logconf_coef(
    step_frac: jax.Array | float, aux_coef: float, warmup_frac: float, warmup: str = "step"
) -> jax.Array:
    """Weight ``c(t)`` of the student's hardened predictions in logconf's target."""
    if warmup == "step":
        return aux_coef * step_warmup(step_frac, warmup_frac)
    if warmup == "linear":
        return aux_coef * ramp(step_frac, warmup_frac)
    raise ValueError(f"unknown logconf warmup {warmup!r}; options: {', '.join(WARMUPS)}")


def alpha_at(
    step_frac: jax.Array | float, alpha_max: float, schedule: str, warmup_frac: float = 0.2
) -> jax.Array:
    """Weight ``alpha(t)`` of the auxiliary term in the combined objective; ends at alpha_max."""
    t = _as_float(step_frac)
    if schedule == "constant":
        return alpha_max * jnp.ones_like(t)
    if schedule == "linear":
        return alpha_max * ramp(t, warmup_frac)
    if schedule == "step":
        return alpha_max * step_warmup(t, warmup_frac)
    if schedule == "cosine":
        return alpha_max * 0.5 * (1.0 - jnp.cos(jnp.pi * ramp(t, warmup_frac)))
    raise ValueError(f"unknown alpha schedule {schedule!r}; options: {', '.join(ALPHA_SCHEDULES)}")


def check_schedule_names(warmup: str | None = None, alpha_schedule: str | None = None) -> None:
    """Fail early, outside jit, on a schedule name the functions above would reject."""
    if warmup is not None and warmup not in WARMUPS:
        raise ValueError(f"unknown logconf warmup {warmup!r}; options: {', '.join(WARMUPS)}")
    if alpha_schedule is not None and alpha_schedule not in ALPHA_SCHEDULES:
        raise ValueError(
            f"unknown alpha schedule {alpha_schedule!r}; options: {', '.join(ALPHA_SCHEDULES)}"
        )
