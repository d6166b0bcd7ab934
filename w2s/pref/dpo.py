"""DPO / IPO training of a causal LM on preference pairs, against a frozen reference.

The reference is the policy's starting point; its summed response log-probabilities are
computed once (``reference_logprobs``) and stored with the run that uses them, so the step
runs only the policy: one forward pass over the batch's chosen and rejected rows together,
log-probabilities of response tokens only (``w2s.pref.losses.sequence_logprob``), the loss of
``w2s.pref.losses.dpo``. The optimizer and schedule are the SFT runs' (``train``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from w2s.config import TrainConfig
from w2s.lm.data import SFTBatch, sft_tokenize
from w2s.lm.train import row_scores
from w2s.pref.losses import check_dpo, dpo, sequence_logprob
from w2s.train.batches import shuffled_rows
from w2s.train.step import forward, optimizer


@dataclass(frozen=True)
class DPOSettings:
    beta: float = 0.1
    label_smoothing: float = 0.0
    kind: str = "sigmoid"  # sigmoid (DPO) | ipo


@dataclass
class DPORows:
    chosen: SFTBatch
    rejected: SFTBatch

    def __len__(self) -> int:
        return len(self.chosen.input_ids)


def dpo_rows(tokenizer, prompts, chosen, rejected, max_length: int, *, eos_id: int) -> DPORows:
    """Prompt + response (+ EOS) rows of both sides, the loss mask on the response, one width
    (trimmed to the longest row of either side)."""
    c = sft_tokenize(tokenizer, prompts, chosen, max_length, eos_id=eos_id)
    r = sft_tokenize(tokenizer, prompts, rejected, max_length, eos_id=eos_id)
    used = int(max(c.attention_mask.sum(1).max(initial=1), r.attention_mask.sum(1).max(initial=1)))
    w = min(max_length, -(-used // 8) * 8)

    def cut(b: SFTBatch) -> SFTBatch:
        return SFTBatch(b.input_ids[:, :w], b.attention_mask[:, :w], b.loss_mask[:, :w],
                        b.prompt_lengths, b.truncated)

    return DPORows(cut(c), cut(r))


def reference_logprobs(lm, rows: DPORows, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(log π_ref(chosen), log π_ref(rejected)) [N] each: response tokens' log-probs summed."""
    return (row_scores(lm, rows.chosen, sequence_logprob, batch_size),
            row_scores(lm, rows.rejected, sequence_logprob, batch_size))


def _batch(rows: DPORows, idx: np.ndarray, ref_c: np.ndarray, ref_r: np.ndarray) -> dict:
    real = np.maximum(idx, 0)
    keep = (idx >= 0)[:, None]

    def side(b: SFTBatch):
        return (b.input_ids[real] * keep, np.where(keep, b.attention_mask[real], 0),
                b.loss_mask[real] * keep)

    (ci, ca, cl), (ri, ra, rl) = side(rows.chosen), side(rows.rejected)
    return {
        "input_ids": jnp.asarray(np.concatenate([ci, ri])),
        "attention_mask": jnp.asarray(np.concatenate([ca, ra])),
        "loss_mask": jnp.asarray(np.concatenate([cl, rl])),
        "ref_chosen": jnp.asarray(ref_c[real], jnp.float32),
        "ref_rejected": jnp.asarray(ref_r[real], jnp.float32),
        "weight": jnp.asarray((idx >= 0).astype(np.float32)),
    }


def make_dpo_step(graphdef, tx: optax.GradientTransformation, settings: DPOSettings):
    """step(params, opt_state, batch) -> (params, opt_state, loss)."""
    check_dpo(settings.kind, settings.beta, settings.label_smoothing)

    def loss_of(params, batch):
        logp = sequence_logprob(forward(graphdef, params, batch), batch["input_ids"],
                                batch["loss_mask"])
        b = logp.shape[0] // 2
        return dpo(logp[:b], logp[b:], batch["ref_chosen"], batch["ref_rejected"],
                   settings.beta, label_smoothing=settings.label_smoothing,
                   kind=settings.kind, weight=batch["weight"])

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss_of)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step, donate_argnums=(0, 1))


def train_dpo(lm, rows: DPORows, ref: tuple[np.ndarray, np.ndarray], cfg: TrainConfig, *,
              lr: float, settings: DPOSettings, epochs: int | None = None, seed: int = 0):
    """Fit the policy (its arrays are donated: use the returned one) by DPO on ``rows`` with the
    reference log-probs ``ref``; returns (policy, loss history)."""
    n = len(rows)
    if n == 0:
        raise ValueError("train_dpo: no pairs to train on")
    ref_c, ref_r = (np.asarray(x, np.float64) for x in ref)
    if len(ref_c) != n or len(ref_r) != n:
        raise ValueError(f"train_dpo: reference log-probs for {len(ref_c)} pairs, {n} pairs given")
    epochs = cfg.epochs if epochs is None else epochs
    total, batches = shuffled_rows(n, cfg.batch_size, epochs, np.random.default_rng(seed))
    graphdef, params = nnx.split(lm)
    tx = optimizer(cfg, lr, total)
    step = make_dpo_step(graphdef, tx, settings)
    opt_state = tx.init(params)
    history = []
    for t, idx in enumerate(batches):
        params, opt_state, value = step(params, opt_state, _batch(rows, idx, ref_c, ref_r))
        history.append((t + 1, float(value)))
    return nnx.merge(graphdef, params), history
