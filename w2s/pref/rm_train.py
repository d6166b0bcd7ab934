"""Training and scoring reward models on preference pairs.

A pair's two rewards, stacked as the logits ``[r_rejected, r_chosen]``, make a two-class
classifier whose class-1 probability is the Bradley–Terry P(chosen ≻ rejected) = σ(r_c − r_r).
So the classification loss carries over: ``xent`` to a target p is the (soft) BT loss
``−p log σ(d) − (1 − p) log σ(−d)``; ``logconf`` is Burns et al.'s confidence auxiliary for
pairs (``pair_logconf``: the side the student itself prefers mixed into the target).
Ground-truth runs use p = 1; a w2s run uses the weak reward model's probabilities.

Texts are scored as the backbone expects them: decoders read the prompt's tokens then the
response's and pool the last one (the orchestrator appends no EOS: the last response token has
read the whole answer, while an appended EOS's state mostly says "the end", and a full instruct
model's reward then barely moves from it); encoders read the tokenizer's sentence pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from w2s.config import LossConfig, TrainConfig
from w2s.lm.data import sft_tokenize
from w2s.train.batches import shuffled_rows
from w2s.train.losses import clean_padding, cross_entropy, hard_targets, masked_mean, xent
from w2s.train.schedules import logconf_coef
from w2s.train.step import forward, optimizer

RM_LOSSES = ("xent", "logconf")


@dataclass
class PairRows:
    """Both sides of N pairs as token rows of one width: [N, S] each."""

    chosen_ids: np.ndarray
    chosen_mask: np.ndarray
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray
    truncated: int  # sides whose text was cut to fit max_length

    def __len__(self) -> int:
        return len(self.chosen_ids)


def _side(tokenizer, prompts, responses, max_length, decoder, eos_id):
    if decoder:
        rows = sft_tokenize(tokenizer, prompts, responses, max_length, eos_id=eos_id)
        return rows.input_ids, rows.attention_mask, rows.truncated
    full = tokenizer(prompts, responses, add_special_tokens=True)["input_ids"]
    enc = tokenizer(prompts, responses, truncation="longest_first", max_length=max_length,
                    padding="max_length", return_tensors="np")
    cut = sum(len(f) > max_length for f in full)
    return enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32), cut


def pair_rows(tokenizer, prompts: list[str], chosen: list[str], rejected: list[str],
              max_length: int, *, decoder: bool, eos_id: int | None) -> PairRows:
    """Token rows of every pair's chosen and rejected text, trimmed to the longest row."""
    c_ids, c_mask, c_cut = _side(tokenizer, prompts, chosen, max_length, decoder, eos_id)
    r_ids, r_mask, r_cut = _side(tokenizer, prompts, rejected, max_length, decoder, eos_id)
    used = int(max(c_mask.sum(1).max(initial=1), r_mask.sum(1).max(initial=1)))
    keep = min(c_ids.shape[1], -(-used // 8) * 8)
    return PairRows(c_ids[:, :keep], c_mask[:, :keep], r_ids[:, :keep], r_mask[:, :keep],
                    c_cut + r_cut)


def _batch(rows: PairRows, idx: np.ndarray, targets: np.ndarray | None = None) -> dict:
    """Pairs ``idx`` (-1: an all-pad row with no weight) as one [2B, S] device batch."""
    real = np.maximum(idx, 0)
    keep = (idx >= 0)[:, None]
    ids = np.concatenate([rows.rejected_ids[real], rows.chosen_ids[real]]) * np.tile(keep, (2, 1))
    mask = np.concatenate([rows.rejected_mask[real], rows.chosen_mask[real]])
    mask = np.where(np.tile(keep, (2, 1)), mask, 0)
    mask[:, 0] = 1  # a pad row still has one position to pool
    out = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(mask),
           "weight": jnp.asarray((idx >= 0).astype(np.float32))}
    if targets is not None:
        p = targets[real].astype(np.float32)
        out["targets"] = jnp.asarray(np.stack([1 - p, p], axis=1))
    return out


def pair_logits(graphdef, params, batch: dict) -> jax.Array:
    """[B, 2] = (r_rejected, r_chosen) for the batch's B pairs."""
    r = forward(graphdef, params, batch)[:, 0]
    b = r.shape[0] // 2
    return jnp.stack([r[:b], r[b:]], axis=1)


def pair_logconf(z, targets, weight, step_frac, loss: LossConfig) -> jax.Array:
    """Burns et al.'s confidence auxiliary for pairs: cross-entropy to ``(1 − c) p + c ŷ``, ŷ the
    side the student itself prefers (the sign of r_c − r_r, detached), c on logconf's warm-up.
    Not the classifier's prior-matched threshold: which side is "chosen" is an artefact of how a
    pair is stored, so a class prior would force a share of every batch to flip."""
    z, y, real = clean_padding(z, targets, weight)
    c = logconf_coef(step_frac, loss.aux_coef, loss.warmup_frac, loss.warmup).astype(z.dtype)
    y_hat = jax.lax.stop_gradient(hard_targets(z))
    return masked_mean(cross_entropy(z, (1.0 - c) * y + c * y_hat), real)


def make_rm_step(graphdef, tx: optax.GradientTransformation, loss: LossConfig | None):
    """step(params, opt_state, batch, step_frac) -> (params, opt_state, loss); ``loss`` None
    (ground truth) or ``name`` xent is the BT loss to the batch's targets, logconf adds the
    confidence auxiliary with ``aux_coef`` / ``warmup_frac`` / ``warmup``."""
    name = "xent" if loss is None else loss.name
    if name not in RM_LOSSES:
        raise ValueError(f"reward-model loss {name!r} unknown; use {', '.join(RM_LOSSES)}")

    def loss_of(params, batch, step_frac):
        z = pair_logits(graphdef, params, batch)
        if name == "logconf":
            return pair_logconf(z, batch["targets"], batch["weight"], step_frac, loss)
        return xent(z, batch["targets"], batch["weight"])

    def step(params, opt_state, batch, step_frac):
        value, grads = jax.value_and_grad(loss_of)(params, batch, step_frac)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def train_rm(model, rows: PairRows, targets: np.ndarray, cfg: TrainConfig, *, lr: float,
             loss: LossConfig | None = None, seed: int = 0):
    """Fit the reward model (its arrays are donated: use the returned one) to P(chosen ≻
    rejected) = ``targets`` [N] for ``epochs`` over the pairs in a seeded shuffle; returns
    (model, loss history)."""
    n = len(rows)
    if n == 0:
        raise ValueError("train_rm: no pairs to train on")
    if len(targets) != n:
        raise ValueError(f"train_rm: {len(targets)} targets for {n} pairs")
    total, batches = shuffled_rows(n, cfg.batch_size, cfg.epochs, np.random.default_rng(seed))
    graphdef, params = nnx.split(model)
    tx = optimizer(cfg, lr, total)
    step = make_rm_step(graphdef, tx, loss)
    opt_state = tx.init(params)
    history = []
    for t, idx in enumerate(batches):
        params, opt_state, value = step(params, opt_state, _batch(rows, idx, targets), t / total)
        history.append((t + 1, float(value)))
    return nnx.merge(graphdef, params), history


def score_pairs(model, rows: PairRows, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(r_chosen, r_rejected) [N] each, float64."""
    graphdef, params = nnx.split(model)
    score = jax.jit(pair_logits)
    out = []
    n = len(rows)
    bs = min(batch_size, n)
    for start in range(0, n, bs):
        idx = np.arange(start, start + bs)
        idx = np.where(idx < n, idx, -1)  # one shape for every batch
        z = np.asarray(score(graphdef, params, _batch(rows, idx)), np.float64)
        out.append(z[idx >= 0])
    z = np.concatenate(out)
    return z[:, 1], z[:, 0]


def preference(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """BT P(chosen ≻ rejected) = σ(r_c − r_r), computed stably."""
    d = np.asarray(r_chosen, np.float64) - np.asarray(r_rejected, np.float64)
    return np.exp(-np.logaddexp(0.0, -d))


def pair_correct(r_chosen: np.ndarray, r_rejected: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the chosen side scores higher, 0.5 on a tie, 0 otherwise."""
    d = np.asarray(r_chosen) - np.asarray(r_rejected)
    return np.where(d > 0, 1.0, np.where(d == 0, 0.5, 0.0))
