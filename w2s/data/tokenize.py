"""Texts to token ids, with an explicit policy for examples longer than ``max_length``.

Every task format puts the answer at the end of the text, so truncation keeps the *last*
``max_length`` tokens (the tokenizer's own left truncation, which keeps special tokens such as
BERT's ``[CLS]``/``[SEP]``). Ids come back unpadded; batches are right-padded downstream with
an explicit attention mask, so the pad id never needs to be a harmless token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from w2s.data.tasks import DataError, TaskData

log = logging.getLogger("w2s.data")

OVERLONG = ("truncate", "drop")


@dataclass
class Tokenized:
    """Token ids per text; ``keep`` is False for examples dropped as overlong."""

    ids: list[np.ndarray]  # int32, unpadded; dropped examples keep their full ids
    keep: np.ndarray  # bool, one per text
    max_length: int
    n_truncated: int = 0
    n_dropped: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(x) for x in self.ids], dtype=np.int64)


def load_tokenizer(model_dir: str | Path) -> Any:
    """The checkpoint's tokenizer, set up for right padding; eos doubles as pad when the
    tokenizer has no pad token (GPT-2, Llama)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(Path(model_dir).expanduser()))
    tok.padding_side = "right"
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise DataError(f"tokenizer in {model_dir} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def _encode(tokenizer: Any, texts: list[str], **kw: Any) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=True, verbose=False, **kw)["input_ids"]


def tokenize(
    texts: list[str], tokenizer: Any, max_length: int, overlong: str = "truncate"
) -> Tokenized:
    """Tokenize ``texts``; overlong ones are left-truncated (``"truncate"``) or marked
    ``keep=False`` (``"drop"``). Logs how many were affected."""
    if overlong not in OVERLONG:
        raise ValueError(f"task.overlong must be one of {', '.join(OVERLONG)}, not {overlong!r}")
    if max_length < 1:
        raise ValueError(f"max_length must be positive, not {max_length}")
    ids = _encode(tokenizer, list(texts))
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    keep = np.ones(len(ids), dtype=bool)
    n_truncated = n_dropped = 0
    if long and overlong == "truncate":
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            cut = _encode(
                tokenizer, [texts[i] for i in long], truncation=True, max_length=max_length
            )
        finally:
            tokenizer.truncation_side = side
        for i, x in zip(long, cut, strict=True):
            ids[i] = x
        n_truncated = len(long)
        log.info(
            "truncated %d of %d examples to their last %d tokens",
            n_truncated,
            len(ids),
            max_length,
        )
    elif long:
        keep[long] = False
        n_dropped = len(long)
        log.info("dropped %d of %d examples longer than %d tokens", n_dropped, len(ids), max_length)
    arrays = [np.asarray(x, dtype=np.int32) for x in ids]
    return Tokenized(arrays, keep, max_length, n_truncated, n_dropped)


def keep_tokenized(data: TaskData, tok: Tokenized) -> tuple[TaskData, list[np.ndarray]]:
    """Remove the examples ``tokenize`` dropped from the task and from the ids alike, recording
    why in ``data.dropped`` (so an empty result is explained by ``make_splits``)."""
    idx = np.flatnonzero(tok.keep)
    kept = data.subset(idx, reason=f"longer than {tok.max_length} tokens (task.overlong=drop)")
    return kept, [tok.ids[i] for i in idx]
