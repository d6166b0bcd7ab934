"""The jitted train and predict steps, written functionally over (graphdef, params).

One compiled step per batch shape: params and optimizer state are donated, the loss and
logits are float32 whatever the compute dtype. The same step function serves ground-truth,
weak-label and live-teacher training: a live teacher's logits are computed inside the step,
with no gradient, from its own token view of the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from w2s.config import TrainConfig
from w2s.models import lora
from w2s.train.precision import low_precision

LossFn = Callable[[jax.Array, dict, jax.Array], jax.Array]  # w2s.train.losses.step_loss


def learning_rate(cfg: TrainConfig, lr: float, total_steps: int) -> optax.Schedule:
    warmup = int(round(cfg.warmup_frac * total_steps))
    decay = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(lr, decay)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(lr, 0.0, decay)
    elif cfg.schedule == "constant":
        after = optax.constant_schedule(lr)
    else:
        raise ValueError(f"train.schedule '{cfg.schedule}' unknown; use cosine, linear or constant")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def optimizer(
    cfg: TrainConfig, lr: float, total_steps: int, labels=None
) -> optax.GradientTransformation:
    """Clipping + the chosen optimizer on a warm-up/decay schedule, with gradient accumulation;
    parameters stored below float32 are updated by ``train.low_precision_update``
    (``w2s.train.precision``; float32 ones pass through). ``labels`` (a pytree of
    ``"train"``/``"frozen"`` like the parameters, ``w2s.models.lora.trainable_labels``) freezes
    the frozen leaves: no update, no optimizer state."""
    sched = learning_rate(cfg, lr, total_steps)
    if cfg.optimizer == "adam":
        opt = optax.adam(sched)
    elif cfg.optimizer == "adamw":
        opt = optax.adamw(sched, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adafactor":
        opt = optax.adafactor(sched, weight_decay_rate=cfg.weight_decay or None)
    else:
        raise ValueError(f"train.optimizer '{cfg.optimizer}' unknown; use adam, adamw or adafactor")
    if cfg.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    if cfg.grad_accum > 1:
        opt = optax.MultiSteps(opt, every_k_schedule=cfg.grad_accum)
    opt = low_precision(opt, cfg.low_precision_update)
    if labels is not None:  # LoRA: only "train" leaves get updates and optimizer state
        opt = optax.multi_transform({"train": opt, "frozen": optax.set_to_zero()}, labels)
    return opt


def forward(
    graphdef: nnx.GraphDef, params, batch: dict, prefix: str = "", dropout_key=None
) -> jax.Array:
    """Logits [B, C] in float32. With ``dropout_key`` (train steps only), LoRA adapters that
    have a dropout rate drop their input (``w2s.models.lora``); without it the model is
    deterministic."""
    model = nnx.merge(graphdef, params)
    if dropout_key is not None:
        lora.set_dropout_keys(model, dropout_key)
    return model(batch[prefix + "input_ids"], batch[prefix + "attention_mask"]).astype(jnp.float32)


def batch_loss(
    graphdef: nnx.GraphDef,
    params,
    batch: dict,
    step_frac,
    loss_fn: LossFn,
    teacher: tuple[nnx.GraphDef, float] | None = None,
    teacher_params=None,
    dropout_key=None,
) -> tuple[jax.Array, jax.Array]:
    """(loss, student logits) for one batch; a live teacher sees its own token view. The
    student alone gets ``dropout_key`` (LoRA dropout); the teacher is deterministic."""
    targets = batch["targets"]
    if teacher is not None:
        t_graphdef, temperature = teacher
        t_logits = jax.lax.stop_gradient(forward(t_graphdef, teacher_params, batch, "teacher_"))
        targets = jax.nn.softmax(t_logits / temperature, axis=-1)
    logits = forward(graphdef, params, batch, dropout_key=dropout_key)
    return loss_fn(logits, {**batch, "targets": targets}, step_frac), logits


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    teacher: tuple[nnx.GraphDef, float] | None = None,
):
    """step(params, opt_state, batch, step_frac[, teacher_params[, dropout_key]])
    -> (params, opt_state, stats).

    ``batch`` holds ``input_ids``, ``attention_mask``, ``targets`` [B,C], ``weight`` [B] and
    ``labels`` [B] (for the progress accuracy only). With ``teacher=(graphdef, T)`` the
    targets are the teacher's tempered probabilities on ``teacher_input_ids``. Remat and
    scanned layers are settings of the model itself (``w2s.models.stack``), applied per layer.
    ``dropout_key`` (``w2s.models.lora.dropout_key(seed, step)``) draws this step's LoRA dropout
    masks; None (or a model without adapter dropout) traces the step without any.
    """

    def loss_of(params, batch, step_frac, teacher_params, dropout_key):
        return batch_loss(
            graphdef, params, batch, step_frac, loss_fn, teacher, teacher_params, dropout_key
        )

    def step(params, opt_state, batch, step_frac, teacher_params=None, dropout_key=None):
        (loss, logits), grads = jax.value_and_grad(loss_of, has_aux=True)(
            params, batch, step_frac, teacher_params, dropout_key
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        w = batch["weight"]
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        stats = {"loss": loss, "accuracy": jnp.sum(correct * w) / jnp.maximum(jnp.sum(w), 1.0)}
        return params, opt_state, stats

    return step


@partial(jax.jit, static_argnums=0)
def predict_probs(graphdef: nnx.GraphDef, params, input_ids, attention_mask) -> jax.Array:
    """Softmax probabilities [B, C] in float32."""
    return jax.nn.softmax(
        forward(graphdef, params, {"input_ids": input_ids, "attention_mask": attention_mask}), -1
    )
