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

from w2s.lm.divergences import check_token_divergence
from w2s.lm.losses import response_kd, response_nll
from w2s.train.step import forward


@dataclass(frozen=True)
class KD:
    """Token-level distillation settings (``w2s.lm.divergences``)."""

    kind: str = "fkl"
    temperature: float = 1.0
    beta: float = 0.5
    skew: float = 0.1


def make_lm_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    *,
    teacher: nnx.GraphDef | None = None,
    kd: KD | None = None,
):
    """step(params, opt_state, batch[, teacher_params]) -> (params, opt_state, loss).

    ``batch``: ``input_ids``, ``attention_mask``, ``loss_mask`` [B, S]. Without ``teacher`` the
    loss is the response NLL; with it, ``kd``'s divergence to the teacher's distributions.
    """
    if (teacher is None) != (kd is None):
        raise ValueError("make_lm_step: a teacher and its KD settings come together")
    if kd is not None:
        check_token_divergence(kd.kind, kd.temperature, kd.beta, kd.skew)

    def loss_of(params, batch, teacher_params):
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

    def step(params, opt_state, batch, teacher_params=None):
        loss, grads = jax.value_and_grad(loss_of)(params, batch, teacher_params)
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
