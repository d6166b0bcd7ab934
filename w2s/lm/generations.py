"""A teacher LM's answers to a split's prompts: the supervision of dsft and token-level KD.

Prompts are generated in batches of similar length (fewer pad tokens, fewer length buckets)
and returned in the input order. Each answer keeps its tokens' log-probabilities under the
model that wrote it; their mean is the answer's confidence (``filter_q`` ranks by it, cascades
defer on it). Stored as ``generations.parquet``: id, split, sample, prompt, text, token_ids,
token_logprobs, confidence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from w2s.generate import generate
from w2s.store import write_parquet

COLUMNS = ("id", "split", "sample", "prompt", "text", "token_ids", "token_logprobs", "confidence")


def answer(
    lm,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    eos_id: int,
    batch_size: int = 32,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[dict]]:
    """For each (already formatted) prompt, ``samples`` answers: dicts with text (EOS and
    special tokens dropped), token_ids and token_logprobs (up to and including EOS), and
    confidence (mean token log-probability). Greedy answers are all equal, so ``samples > 1``
    needs a temperature."""
    if samples > 1 and temperature == 0:
        raise ValueError("several samples per prompt need temperature > 0 (greedy repeats)")
    encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    out: list[list[dict]] = [[] for _ in prompts]
    for sample in range(samples):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(encoded[r]) for r in rows)
            ids = np.zeros((len(rows), width), np.int32)
            mask = np.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, : len(encoded[r])], mask[j, : len(encoded[r])] = encoded[r], 1
            tokens, logps = generate(
                lm,
                ids,
                mask,
                max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_id=eos_id,
                seed=seed + 7919 * sample + start,
                return_logprobs=True,
            )
            tokens, logps = np.asarray(tokens), np.asarray(logps)
            for j, r in enumerate(rows):
                hits = np.flatnonzero(tokens[j] == eos_id)
                end = int(hits[0]) + 1 if len(hits) else max_new_tokens
                kept = tokens[j, :end].tolist()
                lp = logps[j, :end].astype(np.float64)
                text_ids = kept[:-1] if len(hits) else kept
                out[r].append(
                    {
                        "text": tokenizer.decode(text_ids, skip_special_tokens=True),
                        "token_ids": kept,
                        "token_logprobs": lp.tolist(),
                        "confidence": float(lp.mean()),
                    }
                )
    return out


def generations_frame(ids: list[str], split: str, prompts: list[str], answers) -> pd.DataFrame:
    rows = [
        {"id": i, "split": split, "sample": k, "prompt": p, **a}
        for i, p, per in zip(ids, prompts, answers, strict=True)
        for k, a in enumerate(per)
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_generations(path: Path, frame: pd.DataFrame) -> None:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: generations lack columns {missing}")
    write_parquet(path, frame[list(COLUMNS)])
