"""Scoring generated answers: exact match after a fixed normalisation, and reference NLL.

Normalisation (both sides): Unicode NFKC, strip, lower case, runs of whitespace to one space,
then trailing sentence punctuation (``. , ; : ! ?``) and enclosing quotes removed. If both
sides then read as numbers (``-3``, ``+4.50``, ``1,234``, ``1e3``), they match when equal as
numbers (``42`` = ``42.0``); otherwise the strings must be equal. A row may accept several
answers; it is right when any matches. Nothing is extracted from a longer answer: ``17 + 25 =
42.`` does not match ``42``, which is what exact match promises.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

_TRAILING = ".,;:!?"
_QUOTES = "\"'`“”‘’"
_NUMBER = re.compile(
    r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d*)?([eE][+-]?\d+)?|[+-]?\.\d+([eE][+-]?\d+)?"
)


def normalize(text: str) -> str:
    t = unicodedata.normalize("NFKC", text).strip().lower()
    t = re.sub(r"\s+", " ", t)
    prev = None
    while prev != t:  # "'42.'" and "42.'" both come to 42
        prev = t
        t = t.rstrip(_TRAILING).strip()
        if len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
            t = t[1:-1].strip()
    return t


def as_number(text: str) -> float | None:
    """The value of a normalised string that is exactly one number, else None."""
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text.replace(",", ""))
    return value if math.isfinite(value) else None


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError("exact_match: a row needs at least one accepted answer")
    pred = normalize(prediction)
    pred_num = as_number(pred)
    for answer in answers:
        ans = normalize(answer)
        ans_num = as_number(ans)
        if pred_num is not None and ans_num is not None:
            if pred_num == ans_num:
                return True
        elif pred == ans:
            return True
    return False


def exact_match_rate(predictions: Sequence[str], answers: Sequence) -> float:
    """Share of rows whose prediction matches one of its answers."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} rows of answers")
    return float(np.mean([exact_match(p, a) for p, a in zip(predictions, answers, strict=True)]))


def mean_token_nll(token_logprobs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row, the mean negative log-likelihood (nats) of the reference's tokens: ``[B, S]``
    log-probabilities of each reference token and a mask of response tokens -> ``[B]``."""
    lp = np.asarray(token_logprobs, np.float64)
    m = np.asarray(mask, bool)
    if (m.sum(1) == 0).any():
        raise ValueError("mean_token_nll: a row has no response tokens")
    return -(lp * m).sum(1) / m.sum(1)
