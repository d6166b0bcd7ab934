"""The weak judge of distilled DPO: which of two responses the weak model prefers.

Two judges, each given the weak model alone (never the policy, never the ground truth):

- ``lm``: the weak LM's mean token log-likelihood of each response after the prompt (length-
  normalised, so a short answer is not preferred for being short);
- ``rm``: the weak reward model's scores.

A judged pair's ``margin`` is the judge's score difference (preferred minus other); pairs the
judge cannot order (equal scores) or orders by less than ``min_margin`` are left out.
AI-feedback pairs come from several sampled responses per prompt: the judge's best and worst.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s.lm.data import sft_tokenize
from w2s.lm.train import reference_nll
from w2s.pref.rm_train import pair_rows, score_pairs

JUDGES = ("lm", "rm")


def lm_scores(lm, tokenizer, prompts: list[str], responses: list[str], *, max_length: int,
              eos_id: int, batch_size: int = 64) -> np.ndarray:
    """The LM's mean token log-likelihood of each response (+ EOS) after its prompt [N]."""
    rows = sft_tokenize(tokenizer, prompts, responses, max_length, eos_id=eos_id)
    return -reference_nll(lm, rows, batch_size)


def rm_scores(rm, tokenizer, prompts: list[str], responses: list[str], *, max_length: int,
              decoder: bool, eos_id: int | None, batch_size: int = 64) -> np.ndarray:
    """The reward model's score of each (prompt, response) [N]."""
    rows = pair_rows(tokenizer, prompts, responses, responses, max_length, decoder=decoder,
                     eos_id=eos_id)
    return score_pairs(rm, rows, batch_size)[0]


def order_pairs(ids, prompts, first, second, score_first, score_second,
                min_margin: float = 0.0) -> pd.DataFrame:
    """Each pair as (chosen, rejected) by the judge's scores: columns id, prompt, chosen,
    rejected, margin; ties and margins below ``min_margin`` dropped."""
    s1, s2 = np.asarray(score_first, np.float64), np.asarray(score_second, np.float64)
    first_wins = s1 > s2
    frame = pd.DataFrame({
        "id": list(ids),
        "prompt": list(prompts),
        "chosen": np.where(first_wins, first, second),
        "rejected": np.where(first_wins, second, first),
        "margin": np.abs(s1 - s2),
    })
    keep = (s1 != s2) & (frame["margin"].to_numpy() >= min_margin)
    return frame[keep].reset_index(drop=True)


def best_and_worst(ids, prompts, samples: list[list[str]], scores: list[np.ndarray],
                   min_margin: float = 0.0) -> pd.DataFrame:
    """AI-feedback pairs: per prompt, the judge's best sampled response against its worst
    (among distinct texts; a prompt whose samples are all one text gives no pair)."""
    rows = []
    for i, p, texts, s in zip(ids, prompts, samples, scores, strict=True):
        distinct: dict[str, float] = {}
        for t, v in zip(texts, s, strict=True):
            distinct.setdefault(t, float(v))
        if len(distinct) < 2:
            continue
        ranked = sorted(distinct.items(), key=lambda kv: kv[1])
        (worst, lo), (best, hi) = ranked[0], ranked[-1]
        if hi > lo and hi - lo >= min_margin:
            rows.append({"id": i, "prompt": p, "chosen": best, "rejected": worst,
                         "margin": hi - lo})
    return pd.DataFrame(rows, columns=["id", "prompt", "chosen", "rejected", "margin"])
