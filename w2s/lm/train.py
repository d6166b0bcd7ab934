"""Training and scoring a causal LM on tokenized prompt/response rows.

``train_lm`` runs SFT (or token-level KD from a live teacher) for ``epochs`` over the rows in
a seeded shuffle, with the classifier's optimizer and schedule (``w2s.train.step.optimizer``),
fixed-shape batches (the last one padded with zero-weight rows, so one compiled step serves
every batch). ``evaluate`` generates greedy answers and reports exact match and the mean NLL of
the references.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2s.config import TrainConfig
from w2s.generate import generate
from w2s.lm.data import SFTBatch, sft_tokenize, trim
from w2s.lm.generations import answer
from w2s.lm.losses import response_targets, row_nll
from w2s.lm.metrics import exact_match
from w2s.lm.step import KD, SelfTraining, check_same_vocab, make_lm_step
from w2s.train.batches import shuffled_rows
from w2s.train.step import forward, optimizer


def _take(rows: SFTBatch, idx: np.ndarray) -> dict:
    """Rows ``idx`` as a device batch; index -1 is an all-pad row with no loss."""
    real = np.maximum(idx, 0)
    keep = (idx >= 0)[:, None]
    return {
        "input_ids": jnp.asarray(rows.input_ids[real] * keep),
        "attention_mask": jnp.asarray(np.where(keep, rows.attention_mask[real], 0)),
        "loss_mask": jnp.asarray(rows.loss_mask[real] * keep),
    }


@dataclass(frozen=True)
class OnPolicy:
    """A share ``fraction`` of KD batches uses the student's samples (Agarwal et al.'s λ)."""

    fraction: float
    max_new_tokens: int
    eos_id: int
    temperature: float = 1.0


def on_policy_batch(
    lm, batch: dict, prompt_lengths: np.ndarray, policy: OnPolicy, seed: int
) -> dict:
    """The batch's prompts with the student's own sampled answers in place of its responses
    (generalised KD: the teacher then scores what the student itself would say)."""
    ids = np.asarray(batch["input_ids"])
    s = ids.shape[1]
    plen = np.maximum(prompt_lengths, 1)
    prompt_mask = (np.arange(s)[None] < plen[:, None]).astype(np.int32)
    new = np.asarray(
        generate(
            lm,
            ids * prompt_mask,
            prompt_mask,
            policy.max_new_tokens,
            temperature=policy.temperature,
            eos_id=policy.eos_id,
            seed=seed,
        )
    )
    out_ids = np.zeros_like(ids)
    attn = np.zeros_like(ids)
    loss = np.zeros_like(ids)
    real = np.asarray(batch["attention_mask"]).sum(1) > 0
    for i in np.flatnonzero(real):
        hits = np.flatnonzero(new[i] == policy.eos_id)
        answer = new[i, : hits[0] + 1] if len(hits) else new[i]
        seq = np.concatenate([ids[i, : plen[i]], answer])[:s]
        out_ids[i, : len(seq)], attn[i, : len(seq)] = seq, 1
        loss[i, plen[i] : len(seq)] = 1
    return {
        "input_ids": jnp.asarray(out_ids),
        "attention_mask": jnp.asarray(attn),
        "loss_mask": jnp.asarray(loss),
    }


@dataclass
class TrainResult:
    lm: nnx.Module
    loss_history: list[tuple[int, float]]


def train_lm(
    lm,
    rows: SFTBatch,
    cfg: TrainConfig,
    *,
    lr: float,
    seed: int = 0,
    teacher=None,
    kd: KD | None = None,
    on_policy: OnPolicy | None = None,
    aux: SelfTraining | None = None,
    aux_max_new_tokens: int = 32,
    eos_id: int | None = None,
) -> TrainResult:
    """Fine-tune ``lm`` (its arrays are donated: use the returned model). With ``on_policy``
    (needs a teacher) each batch is, with probability ``fraction``, replaced by the student's
    current samples for the same prompts; the draw and the samples follow ``seed``. With
    ``aux`` each step adds self-training on the student's current greedy answers (up to
    ``aux_max_new_tokens``) under the combined objective."""
    n = len(rows.input_ids)
    if n == 0:
        raise ValueError("train_lm: no rows to train on")
    if on_policy is not None and (teacher is None or not 0 <= on_policy.fraction <= 1):
        raise ValueError("on-policy distillation needs a teacher and 0 <= fraction <= 1")
    if aux is not None and eos_id is None:
        raise ValueError("self-training (aux) needs eos_id to cut the student's own answers")
    room = max(on_policy.max_new_tokens if on_policy else 0, aux_max_new_tokens if aux else 0)
    rows = trim(rows, room)  # generated answers must fit too
    rng = np.random.default_rng(seed)
    total, batches = shuffled_rows(n, cfg.batch_size, cfg.epochs, rng)
    graphdef, params = nnx.split(lm)
    t_graphdef = t_params = None
    if teacher is not None:
        check_same_vocab(lm, teacher)
        t_graphdef, t_params = nnx.split(teacher)
    tx = optimizer(cfg, lr, total)
    step = make_lm_step(
        graphdef, tx, teacher=t_graphdef, kd=kd if teacher is not None else None, aux=aux
    )
    greedy = OnPolicy(1.0, aux_max_new_tokens, eos_id, temperature=0.0) if aux else None
    opt_state = tx.init(params)
    history = []
    for t, idx in enumerate(batches):
        batch = _take(rows, idx)
        if on_policy is not None and rng.random() < on_policy.fraction:
            student = nnx.merge(graphdef, params)
            plen = rows.prompt_lengths[np.maximum(idx, 0)]
            batch = on_policy_batch(student, batch, plen, on_policy, seed * 100003 + t)
        if aux is not None:
            own = on_policy_batch(
                nnx.merge(graphdef, params),
                batch,
                rows.prompt_lengths[np.maximum(idx, 0)],
                greedy,
                0,
            )
            batch = {**batch, **{f"aux_{k}": v for k, v in own.items()}}
        # logits only where the loss is (the auxiliary's own answers keep full logits)
        batch.update({k: jnp.asarray(v) for k, v in
                      response_targets(batch["input_ids"], batch["loss_mask"]).items()})
        params, opt_state, loss = step(params, opt_state, batch, t_params, t / total)
        history.append((t + 1, float(loss)))
    return TrainResult(nnx.merge(graphdef, params), history)


def row_scores(lm, rows: SFTBatch, score, batch_size: int = 64) -> np.ndarray:
    """``score(logits, input_ids, loss_mask)`` -> [B] for every row, teacher-forced under
    ``lm``, in batches of one shape (the last padded with empty rows), as float64 [N]."""
    graphdef, params = nnx.split(lm)
    rows = trim(rows)
    n = len(rows.input_ids)
    bs = min(batch_size, n)

    @jax.jit
    def run(params, b):
        return score(forward(graphdef, params, b), b["input_ids"], b["loss_mask"])

    out = []
    for start in range(0, n, bs):
        idx = np.arange(start, start + bs)
        idx = np.where(idx < n, idx, -1)
        out.append(np.asarray(run(params, _take(rows, idx)), np.float64)[idx >= 0])
    return np.concatenate(out) if out else np.zeros(0)


def reference_nll(lm, rows: SFTBatch, batch_size: int = 64) -> np.ndarray:
    """Each row's mean NLL per reference token [N] under ``lm`` (teacher-forced)."""
    return row_scores(lm, rows, row_nll, batch_size)


def evaluate(
    lm,
    tokenizer,
    prompts: list[str],
    responses: list[str],
    answers: list[list[str]],
    *,
    max_length: int,
    max_new_tokens: int,
    eos_id: int,
    batch_size: int = 32,
) -> dict:
    """Greedy answers to formatted ``prompts``: exact match against ``answers``, the mean
    reference NLL (``responses``), and the per-row records."""
    got = answer(
        lm, tokenizer, prompts, max_new_tokens=max_new_tokens, eos_id=eos_id, batch_size=batch_size
    )
    rows = sft_tokenize(tokenizer, prompts, responses, max_length, eos_id=eos_id)
    nll = reference_nll(lm, rows)
    correct = [exact_match(a[0]["text"], acc) for a, acc in zip(got, answers, strict=True)]
    return {
        "exact_match": float(np.mean(correct)),
        "nll": float(np.mean(nll)),
        "n": len(prompts),
        "texts": [a[0]["text"] for a in got],
        "confidence": [a[0]["confidence"] for a in got],
        "correct": correct,
        "row_nll": nll.tolist(),
        "answers": got,  # with token ids and log-probs, as w2s.lm.generations.answer gives
    }
