"""The three runs of language-model weak-to-strong, on a generative task's splits A and B.

- weak: SFT of the weak LM on A's references; it then answers B's prompts (its generations
  are the w2s runs' only supervision) and the test prompts.
- ceiling: SFT of the strong LM on B's references.
- w2s, by ``loss``: ``dsft``, SFT of the strong LM on the weak LM's answers to B (never B's
  references); ``token_kd``, the strong LM matches the weak LM's next-token distributions,
  teacher-forced on those answers (live teacher, same vocabulary).

PGR (``analysis.pgr``) applies to exact match, and to minus the reference NLL. The weak answers
are what ``w2s.lm.generations`` stores as ``generations.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from w2s.config import TrainConfig
from w2s.lm.data import sft_tokenize
from w2s.lm.generations import answer
from w2s.lm.step import KD
from w2s.lm.train import evaluate, train_lm

W2S_LOSSES = ("dsft", "token_kd")


@dataclass
class Split:
    prompts: list[str]  # formatted (chat template applied)
    responses: list[str]
    answers: list[list[str]]


@dataclass
class LMSettings:
    train: TrainConfig
    weak_lr: float
    strong_lr: float
    max_length: int
    max_new_tokens: int
    eos_id: int
    seed: int = 0
    kd: KD = field(default_factory=KD)


def _eval(lm, tok, split: Split, s: LMSettings) -> dict:
    return evaluate(
        lm,
        tok,
        split.prompts,
        split.responses,
        split.answers,
        max_length=s.max_length,
        max_new_tokens=s.max_new_tokens,
        eos_id=s.eos_id,
    )


def weak_run(load_weak, tok, a: Split, b: Split, test: Split, s: LMSettings) -> dict:
    """Train on A; return the model, its test metrics and its answers to B's prompts."""
    rows = sft_tokenize(tok, a.prompts, a.responses, s.max_length, eos_id=s.eos_id)
    lm = train_lm(load_weak(), rows, s.train, lr=s.weak_lr, seed=s.seed).lm
    b_answers = answer(lm, tok, b.prompts, max_new_tokens=s.max_new_tokens, eos_id=s.eos_id)
    return {"lm": lm, "test": _eval(lm, tok, test, s), "b_answers": b_answers}


def ceiling_run(load_strong, tok, b: Split, test: Split, s: LMSettings) -> dict:
    rows = sft_tokenize(tok, b.prompts, b.responses, s.max_length, eos_id=s.eos_id)
    lm = train_lm(load_strong(), rows, s.train, lr=s.strong_lr, seed=s.seed).lm
    return {"lm": lm, "test": _eval(lm, tok, test, s)}


def most_confident(answers: list[list[dict]], q: float) -> np.ndarray:
    """Indices (in order) of the ``ceil(q n)`` prompts whose first answer has the highest
    confidence (mean token log-probability), ties broken by position."""
    if not 0 < q <= 1:
        raise ValueError(f"filter_q must lie in (0, 1], not {q}")
    conf = np.array([a[0]["confidence"] for a in answers])
    keep = int(np.ceil(q * len(conf)))
    return np.sort(np.argsort(-conf, kind="stable")[:keep])


def w2s_run(
    load_strong,
    tok,
    weak: dict,
    b: Split,
    test: Split,
    s: LMSettings,
    loss: str,
    filter_q: float = 1.0,
) -> dict:
    """The strong LM supervised by the weak run alone: B's prompts with the weak answers, the
    ``filter_q`` share the weak LM is most confident of."""
    if loss not in W2S_LOSSES:
        raise ValueError(f"w2s loss {loss!r} unknown; use {', '.join(W2S_LOSSES)}")
    keep = most_confident(weak["b_answers"], filter_q)
    texts = [weak["b_answers"][i][0]["text"] for i in keep]
    prompts = [b.prompts[i] for i in keep]
    rows = sft_tokenize(tok, prompts, texts, s.max_length, eos_id=s.eos_id)
    teacher = weak["lm"] if loss == "token_kd" else None
    lm = train_lm(
        load_strong(),
        rows,
        s.train,
        lr=s.strong_lr,
        seed=s.seed,
        teacher=teacher,
        kd=s.kd if teacher is not None else None,
    ).lm
    return {"lm": lm, "test": _eval(lm, tok, test, s), "b_texts": texts, "b_kept": keep}
