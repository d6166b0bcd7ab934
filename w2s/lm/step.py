"""The jitted LM train step: SFT on response tokens, or token-level KD from a live teacher.

Same shape as the classifier's step (``w2s.train.step``): functional over (graphdef, params),
parameters and optimizer state donated, logits and loss in float32. With a teacher its logits
come from its own forward pass inside the step, without gradient; teacher and student must
share a vocabulary (checked when the step is made).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import optax
from flax import nnx

from w2s.lm.divergences import check_token_divergence, token_divergence
from w2s.lm.losses import gathered_logits, gathered_nll, response_kd, response_nll
from w2s.train.schedules import alpha_at, check_schedule_names
from w2s.train.step import forward


@dataclass(frozen=True)
class KD:
    """Token-level distillation settings (``w2s.lm.divergences``)."""

    kind: str = "fkl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1


@dataclass(frozen=True)
class SelfTraining:
    """The combined objective's auxiliary term: ``(1 - α(t)) L + α(t) NLL(own answers)``, the
    student's own greedy answers to the same prompts as targets (the generative counterpart of
    the classifier's confidence loss); α follows ``w2s.train.schedules.alpha_at``."""

    alpha_max: float
    schedule: str = "constant"
    warmup_frac: float = 0.2


def make_lm_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    teacher: nnx.GraphDef | None = None,
    kd: KD | None = None,
    aux: SelfTraining | None = None,
):
    """step(params, opt_state, batch[, teacher_params[, step_frac]]) -> (params, opt_state, loss).

    ``batch``: ``input_ids``, ``attention_mask``, ``loss_mask`` [B, S]. Without ``teacher`` the
    loss is the response NLL; with it, ``kd``'s divergence to the teacher's distributions. With
    ``w2s.lm.losses.response_targets`` in the batch, either is computed from logits at the
    response positions only: the same value for a fraction of the LM head's work. With
    ``aux`` the batch also holds ``aux_input_ids`` / ``aux_attention_mask`` /
    ``aux_loss_mask`` (the student's own answers) and ``step_frac`` sets α.
    """
    if (teacher is None) != (kd is None):
        raise ValueError("make_lm_step: a teacher and its KD settings come together")
    if kd is not None:
        check_token_divergence(kd.kind, kd.temperature, kd.beta, kd.skew)
    if aux is not None:
        check_schedule_names(alpha_schedule=aux.schedule)

    def main_loss(params, batch, teacher_params):
        if "target_index" in batch:  # logits only where the loss is (the same loss)
            student = gathered_logits(nnx.merge(graphdef, params), batch)
            if teacher is None:
                return gathered_nll(student, batch)
            t_logits = jax.lax.stop_gradient(
                gathered_logits(nnx.merge(teacher, teacher_params), batch))
            return token_divergence(student[None], t_logits[None],
                                    batch["target_weight"][None], kd.kind, kd.temperature,
                                    beta=kd.beta, skew=kd.skew)
        logits = forward(graphdef, params, batch)
        if teacher is None:
            return response_nll(logits, batch["input_ids"], batch["loss_mask"])
        t_logits = jax.lax.stop_gradient(forward(teacher, teacher_params, batch))
        return response_kd(
            logits,
            t_logits,
            batch["loss_mask"],
            kd.kind,
            kd.temperature,
            beta=kd.beta,
            skew=kd.skew,
        )

    def loss_of(params, batch, teacher_params, step_frac):
        loss = main_loss(params, batch, teacher_params)
        if aux is None:
            return loss
        own = {k[4:]: v for k, v in batch.items() if k.startswith("aux_")}
        own_nll = response_nll(forward(graphdef, params, own), own["input_ids"], own["loss_mask"])
        a = alpha_at(step_frac, aux.alpha_max, aux.schedule, aux.warmup_frac)
        return (1 - a) * loss + a * own_nll

    def step(params, opt_state, batch, teacher_params=None, step_frac=0.0):
        loss, grads = jax.value_and_grad(loss_of)(params, batch, teacher_params, step_frac)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def check_same_vocab(student, teacher) -> None:
    """Token-level KD compares distributions entry by entry: one vocabulary, or a clear no."""
    vs, vt = student.config.vocab_size, teacher.config.vocab_size
    if vs != vt:
        raise ValueError(
            f"token-level distillation needs the teacher's vocabulary: the student has {vs} "
            f"tokens, the teacher {vt}; use dsft (distil on generated text) instead"
        )
