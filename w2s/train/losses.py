"""Training losses for the strong model (the student), called inside the jitted train step.

Contract shared by every loss: ``fn(logits, targets, mask, step_frac, **hparams) -> scalar``.

- ``logits`` [B, C]: the student's class logits (upcast to at least float32).
- ``targets`` [B, C]: probabilities (soft weak labels, one-hot ground truth, or, for the
  combined objective, the tempered teacher probabilities).
- ``mask`` [B]: 1 for a real example, 0 for a padding row that fills the last batch. Padding
  rows are replaced by harmless values before any arithmetic, so whatever they hold changes
  neither the loss, nor any batch statistic (logconf's threshold and label prior), nor the
  gradient; their own gradient is exactly 0.
- ``step_frac``: progress through training in [0, 1], a traced scalar.

The result is the mean over real examples (0 when a batch has none).

Losses (Burns et al. 2023 for the first three):

- ``xent``: cross-entropy to soft or hard targets.
- ``logconf``: cross-entropy to ``(1 - c) y + c yhat`` where ``yhat`` is the student's own
  prediction hardened and detached (:func:`harden`), with ``c(t)`` warmed up to ``aux_coef``.
- ``product``: cross-entropy to the detached, renormalised ``p_student**beta * y**alpha``.
- ``kd`` (:func:`combined`): ``(1 - alpha(t)) D(teacher, student) + alpha(t) L_aux``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from w2s.train.divergences import check_divergence, upcast
from w2s.train.divergences import divergence as divergence_fn
from w2s.train.schedules import alpha_at, check_schedule_names, logconf_coef

Loss = Callable[..., jax.Array]
#: What the train step calls: ``loss(logits, batch, step_frac)``, the batch as the step sees it.
StepLoss = Callable[[jax.Array, dict, Any], jax.Array]
AUX_KINDS = ("none", "confidence", "gt")
SUPERVISIONS = ("labels", "live")


# ---------------------------------------------------------------------------------------------
# building blocks


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``values`` [B] over rows with ``mask > 0``; 0 if there are none."""
    real = mask > 0
    total = jnp.sum(jnp.where(real, values, 0.0))
    return total / jnp.maximum(jnp.sum(real), 1).astype(total.dtype)


def clean_padding(
    logits: jax.Array, targets: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Upcast, and put zero logits and uniform targets into padding rows.

    Masking only the final mean is not enough: a NaN or inf computed in a padding row leaks
    through ``0 * nan`` in the value and through the backward pass of ``jnp.where``.
    """
    real = jnp.asarray(mask) > 0
    z = upcast(logits)
    y = upcast(targets)
    n_classes = z.shape[-1]
    z = jnp.where(real[:, None], z, 0.0)
    y = jnp.where(real[:, None], y, 1.0 / n_classes)
    return z, y, real


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example ``-sum_c t_c log softmax(z)_c`` [B]; classes with ``t_c = 0`` add exactly 0."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.where(targets != 0, targets * log_p, 0.0), axis=-1)


def hard_targets(targets: jax.Array) -> jax.Array:
    """One-hot of each row's argmax (idempotent on one-hot rows)."""
    return jax.nn.one_hot(jnp.argmax(targets, axis=-1), targets.shape[-1], dtype=targets.dtype)


def harden(probs: jax.Array, prior_targets: jax.Array, real: jax.Array) -> jax.Array:
    """The student's predictions made hard, as detached one-hot rows [B, C].

    C = 2 (Burns et al.): class 0 where ``p0 >= threshold``, the threshold being the batch
    quantile of ``p0`` at level ``mean(prior_targets[:, 1])`` over real rows, so that the hard
    predictions follow the weak labels' class prior rather than the student's calibration.
    C > 2: argmax. Padding rows are left out of the quantile and of the prior.
    """
    probs = jax.lax.stop_gradient(probs)
    n_classes = probs.shape[-1]
    if n_classes != 2:
        return jax.lax.stop_gradient(hard_targets(probs))
    level = jnp.clip(masked_mean(prior_targets[:, 1], real), 0.0, 1.0)
    p0 = probs[:, 0]
    threshold = jnp.nanquantile(jnp.where(real, p0, jnp.nan), level)
    is_0 = p0 >= threshold
    return jnp.stack([is_0, ~is_0], axis=-1).astype(probs.dtype)


# ---------------------------------------------------------------------------------------------
# losses


def xent(
    logits: jax.Array, targets: jax.Array, mask: jax.Array, step_frac: jax.Array | float = 0.0
) -> jax.Array:
    """Cross-entropy to soft or hard targets (``step_frac`` unused, kept for the contract)."""
    del step_frac
    z, y, real = clean_padding(logits, targets, mask)
    return masked_mean(cross_entropy(z, y), real)


def logconf(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    step_frac: jax.Array | float,
    *,
    aux_coef: float = 0.5,
    warmup_frac: float = 0.2,
    warmup: str = "step",
) -> jax.Array:
    """Burns et al.'s auxiliary confidence loss: CE to ``(1 - c) y + c yhat``.

    Letting the student lean on its own hardened predictions lets it disagree with the weak
    labels where it is confident. ``warmup`` picks ``c(t)``: ``step`` is the reference code's
    (``aux_coef * t`` up to ``warmup_frac``, then a jump to ``aux_coef``), ``linear`` the fixed
    ramp ``aux_coef * min(t / warmup_frac, 1)``.
    """
    z, y, real = clean_padding(logits, targets, mask)
    c = logconf_coef(step_frac, aux_coef, warmup_frac, warmup).astype(z.dtype)
    y_hat = harden(jax.nn.softmax(z, axis=-1), y, real)
    target = (1.0 - c) * y + c * y_hat
    return masked_mean(cross_entropy(z, target), real)


def product(
    logits: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    step_frac: jax.Array | float = 0.0,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> jax.Array:
    """CE to the detached target ``p_student**beta * y**alpha``, renormalised per row.

    Computed in log space, so hard labels (``y = 0``) and saturated students do not give
    ``0 / 0``; a zero power gives a factor of 1, as ``0**0 = 1``.
    """
    del step_frac
    z, y, real = clean_padding(logits, targets, mask)
    log_p = jax.nn.log_softmax(z, axis=-1)
    log_y = jnp.where(y > 0, jnp.log(jnp.where(y > 0, y, 1.0)), -jnp.inf)
    log_target = jnp.where(beta == 0, 0.0, beta * log_p) + jnp.where(alpha == 0, 0.0, alpha * log_y)
    target = jax.lax.stop_gradient(jax.nn.softmax(log_target, axis=-1))
    return masked_mean(cross_entropy(z, target), real)


def combined(
    logits: jax.Array,
    teacher_probs: jax.Array,
    mask: jax.Array,
    step_frac: jax.Array | float,
    *,
    divergence: str = "fkl",
    temperature: float = 1.0,
    aux: str = "none",
    alpha_max: float = 0.0,
    alpha_schedule: str = "constant",
    warmup_frac: float = 0.2,
    gt_targets: jax.Array | None = None,
    gt_mask: jax.Array | None = None,
) -> jax.Array:
    """Live-distillation objective ``(1 - alpha(t)) D(teacher, student) + alpha(t) L_aux``.

    ``D`` is :func:`w2s.train.divergences.divergence` (student at temperature ``T``, times
    ``T**2``), averaged over real rows. ``L_aux``, always at ``T = 1``:

    - ``none``: no auxiliary term; ``alpha`` is ignored and the loss is ``D`` alone.
    - ``confidence``: CE to the student's own hardened, detached predictions (logconf's
      confidence term, same rule as :func:`harden`; for C = 2 the class prior is the mean of
      the teacher probabilities as given, i.e. after tempering).
    - ``gt``: CE to ``gt_targets`` averaged over the rows with ``gt_mask = 1`` only (0 in a
      batch without such rows). This uses ground truth for a share of B and is therefore
      *not* pure weak-to-strong supervision; report it as such.

    ``alpha(t)`` follows ``alpha_schedule`` (:func:`w2s.train.schedules.alpha_at`): ``linear``
    and ``cosine`` rise over the first ``warmup_frac`` of training, ``step`` is the reference
    logconf jump at ``warmup_frac``.
    """
    check_divergence(divergence, temperature)
    check_aux(aux)
    check_schedule_names(alpha_schedule=alpha_schedule)
    z, q, real = clean_padding(logits, teacher_probs, mask)
    d = masked_mean(divergence_fn(z, q, divergence, temperature), real)
    if aux == "none":
        return d
    if aux == "confidence":
        y_hat = harden(jax.nn.softmax(z, axis=-1), q, real)
        aux_loss = masked_mean(cross_entropy(z, y_hat), real)
    else:  # gt
        if gt_targets is None or gt_mask is None:
            raise ValueError("aux='gt' needs gt_targets [B, C] and gt_mask [B]")
        gt_real = real & (jnp.asarray(gt_mask) > 0)
        g = jnp.where(gt_real[:, None], upcast(gt_targets), 1.0 / z.shape[-1])
        aux_loss = masked_mean(cross_entropy(z, g), gt_real)
    a = alpha_at(step_frac, alpha_max, alpha_schedule, warmup_frac).astype(d.dtype)
    return (1.0 - a) * d + a * aux_loss


def check_aux(aux: str) -> None:
    """Fail early, outside jit, on an auxiliary term :func:`combined` does not know."""
    if aux not in AUX_KINDS:
        raise ValueError(f"unknown aux {aux!r}; options: {', '.join(AUX_KINDS)}")


# ---------------------------------------------------------------------------------------------
# registry

LOSSES: dict[str, Loss] = {"xent": xent, "logconf": logconf, "product": product}
# LossConfig keys each loss reads
_HPARAMS: dict[str, tuple[str, ...]] = {
    "xent": (),
    "logconf": ("aux_coef", "warmup_frac", "warmup"),
    "product": ("alpha", "beta"),
}
_KD_NAME = "kd"


def _bind(fn: Loss, **hparams: Any) -> Loss:
    def loss(
        logits: jax.Array, targets: jax.Array, mask: jax.Array, step_frac: Any, **extra: Any
    ) -> jax.Array:
        return fn(logits, targets, mask, step_frac, **hparams, **extra)

    loss.__name__ = getattr(fn, "__name__", "loss")
    loss.__doc__ = fn.__doc__
    return loss


def _with_hard_targets(fn: Loss) -> Loss:
    def loss(
        logits: jax.Array, targets: jax.Array, mask: jax.Array, step_frac: Any, **extra: Any
    ) -> jax.Array:
        return fn(logits, hard_targets(upcast(targets)), mask, step_frac, **extra)

    loss.__name__ = getattr(fn, "__name__", "loss")
    loss.__doc__ = fn.__doc__
    return loss


def get_loss(cfg: Any) -> Loss:
    """The loss named by ``cfg`` (a ``LossConfig``) with its hyperparameters bound.

    Returns ``fn(logits, targets, mask, step_frac, **extra)``. ``name='kd'``, and
    ``supervision='live'`` with ``name='xent'``, give :func:`combined` bound to the config;
    ``targets`` are then the (tempered) teacher probabilities, and ``aux='gt'`` takes
    ``gt_targets=`` and ``gt_mask=`` as ``extra``. ``hard_labels`` with offline labels turns
    the targets into one-hot argmax rows first. Names are checked here, outside jit.
    """
    name, supervision = cfg.name, cfg.supervision
    if supervision not in SUPERVISIONS:
        raise ValueError(f"unknown supervision {supervision!r}; options: {', '.join(SUPERVISIONS)}")
    if name == _KD_NAME or supervision == "live":
        if name not in (_KD_NAME, "xent"):
            raise ValueError(
                f"supervision='live' uses the combined objective; loss.name must be 'kd' (or "
                f"'xent'), got {name!r}. aux='confidence' gives logconf's confidence term."
            )
        check_divergence(cfg.divergence, cfg.temperature)
        check_aux(cfg.aux)
        check_schedule_names(alpha_schedule=cfg.alpha_schedule)
        if cfg.aux == "gt" and not cfg.gt_fraction > 0:
            raise ValueError("aux='gt' needs gt_fraction > 0 (the share of B with ground truth)")
        fn = _bind(
            combined,
            divergence=cfg.divergence,
            temperature=float(cfg.temperature),
            aux=cfg.aux,
            alpha_max=float(cfg.alpha_max),
            alpha_schedule=cfg.alpha_schedule,
            warmup_frac=float(cfg.warmup_frac),
        )
    elif name in LOSSES:
        if name == "logconf":
            check_schedule_names(warmup=cfg.warmup)
        fn = _bind(LOSSES[name], **{k: getattr(cfg, k) for k in _HPARAMS[name]})
    else:
        options = ", ".join([*LOSSES, _KD_NAME])
        raise ValueError(f"unknown loss {name!r}; options: {options}")
    if cfg.hard_labels and supervision == "labels":
        fn = _with_hard_targets(fn)
    return fn


def step_loss(cfg: Any | None = None) -> StepLoss:
    """The one loss contract of the train step: ``loss(logits, batch, step_frac) -> scalar``.

    ``cfg=None`` is the ground-truth loss of weak and ceiling runs (cross-entropy to one-hot
    ``batch["targets"]``); otherwise :func:`get_loss` of the ``LossConfig``. The batch holds
    ``targets`` (a live teacher's probabilities are put there by the step), ``weight`` and,
    for ``aux='gt'``, ``gt_mask`` with ``labels`` as the ground truth of those rows.
    """
    fn = xent if cfg is None else get_loss(cfg)

    def loss(logits: jax.Array, batch: dict, step_frac: Any) -> jax.Array:
        extra = {}
        if "gt_mask" in batch:
            extra["gt_targets"] = jax.nn.one_hot(batch["labels"], logits.shape[-1])
            extra["gt_mask"] = batch["gt_mask"]
        return fn(logits, batch["targets"], batch["weight"], step_frac, **extra)

    return loss
