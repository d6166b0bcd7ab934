"""The five binary tasks of Burns et al. (2023), built from their Hugging Face datasets.

Label 1 always means "correct". Multiple-choice data become binary by a coin flip per question:
heads pairs it with the right answer (label 1), tails with a randomly drawn wrong one (label 0).
The flips come from ``np.random.default_rng(DATA_SEED)`` drawn once per row in file order, so
a task's texts and labels are the same in every run. Ids are ``"{hf_split}/{row}"`` with the
row number in the split's files (shards concatenated in name order), the same whether the
split was downloaded or read from ``task.path``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from w2s.config import TaskConfig
from w2s.data.hf import download_split
from w2s.data.io import read_table, read_tables, require_columns
from w2s.data.tasks import DATA_SEED, DataError, TaskData, register_loader

Built = tuple[list[str], list[int], list[bool]]  # texts, labels, usable rows
Builder = Callable[[pd.DataFrame, np.random.Generator, str], Built]


@dataclass(frozen=True)
class Format:
    repo: str  # default HF dataset id (task.source overrides it)
    columns: tuple[str, ...]
    label_names: tuple[str, str]
    build: Builder


def _str(value: object) -> str:
    """A cell as text; a missing cell (None/NaN) is empty, never the string "nan"."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _text(value: object) -> str | None:
    """A usable answer string, or None for missing/blank cells."""
    if isinstance(value, str) and value.strip():
        return value
    return None


def _coin_pairs(
    prompts: list[str], answers: list[list[object]], right: list[int], rng: np.random.Generator
) -> Built:
    """Per row: heads -> prompt + the right answer (label 1), tails -> prompt + a uniformly
    drawn wrong one (label 0). Rows without a right and a wrong answer are marked unusable."""
    n = len(prompts)
    heads = rng.random(n) < 0.5
    pick = rng.random(n)
    texts, labels, ok = [], [], []
    for i in range(n):
        good = _text(answers[i][right[i]]) if 0 <= right[i] < len(answers[i]) else None
        wrong = [a for j, a in enumerate(answers[i]) if j != right[i] and _text(a) is not None]
        if good is None or not wrong:
            texts.append("")
            labels.append(0)
            ok.append(False)
            continue
        answer = good if heads[i] else wrong[int(pick[i] * len(wrong))]
        texts.append(prompts[i] + str(answer))
        labels.append(int(heads[i]))
        ok.append(True)
    return texts, labels, ok


def build_sciq(df: pd.DataFrame, rng: np.random.Generator, where: str) -> Built:
    prompts = [f"Q: {_str(q)} A: " for q in df["question"]]
    answers = [
        list(row)
        for row in zip(
            df["correct_answer"],
            df["distractor1"],
            df["distractor2"],
            df["distractor3"],
            strict=True,
        )
    ]
    return _coin_pairs(prompts, answers, [0] * len(df), rng)


def build_cosmos_qa(df: pd.DataFrame, rng: np.random.Generator, where: str) -> Built:
    prompts = [
        f"Content: {_str(c)}\n\nQuestion: {_str(q)}\n\nAnswer: "
        for c, q in zip(df["context"], df["question"], strict=True)
    ]
    answers = [list(r) for r in zip(*(df[f"answer{k}"] for k in range(4)), strict=True)]
    right = [int(x) if pd.notna(x) else -1 for x in df["label"]]  # -1: unlabelled (test split)
    return _coin_pairs(prompts, answers, right, rng)


def _binary(value: object, where: str, row: int, column: str) -> int:
    if isinstance(value, bool | np.bool_) or value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    raise DataError(f"{where}: row {row}: {column} {value!r} is not 0/1 or true/false")


def build_boolq(df: pd.DataFrame, rng: np.random.Generator, where: str) -> Built:
    texts = [
        f"Passage: {_str(p)}\nQuestion: {_str(q)}"
        for p, q in zip(df["passage"], df["question"], strict=True)
    ]
    labels = [_binary(a, where, i, "answer") for i, a in enumerate(df["answer"])]
    return texts, labels, [True] * len(df)


def build_amazon_polarity(df: pd.DataFrame, rng: np.random.Generator, where: str) -> Built:
    texts = [f"{_str(t)}\n{_str(c)}" for t, c in zip(df["title"], df["content"], strict=True)]
    labels = [_binary(y, where, i, "label") for i, y in enumerate(df["label"])]
    return texts, labels, [True] * len(df)


def build_anthropic_hh(df: pd.DataFrame, rng: np.random.Generator, where: str) -> Built:
    heads = rng.random(len(df)) < 0.5
    texts = [
        _str(c) if h else _str(r)
        for h, c, r in zip(heads, df["chosen"], df["rejected"], strict=True)
    ]
    return texts, heads.astype(int).tolist(), [True] * len(df)


FORMATS: dict[str, Format] = {
    "sciq": Format(
        "allenai/sciq",
        ("question", "distractor1", "distractor2", "distractor3", "correct_answer"),
        ("incorrect", "correct"),
        build_sciq,
    ),
    "boolq": Format(
        "google/boolq", ("question", "answer", "passage"), ("false", "true"), build_boolq
    ),
    "cosmos_qa": Format(
        "allenai/cosmos_qa",
        ("context", "question", "answer0", "answer1", "answer2", "answer3", "label"),
        ("incorrect", "correct"),
        build_cosmos_qa,
    ),
    "amazon_polarity": Format(
        "fancyzhx/amazon_polarity",
        ("title", "content", "label"),
        ("negative", "positive"),
        build_amazon_polarity,
    ),
    "anthropic_hh": Format(
        "Anthropic/hh-rlhf", ("chosen", "rejected"), ("rejected", "chosen"), build_anthropic_hh
    ),
}


@register_loader(*FORMATS)
def load_format(cfg: TaskConfig, cache_dir: Path) -> TaskData:
    """Read ``task.path`` or download the HF split, then build the binary examples."""
    fmt = FORMATS[cfg.kind]
    if cfg.path:
        where = str(Path(cfg.path).expanduser())
        df = read_table(where)
    else:
        repo = cfg.source or fmt.repo
        where = f"HF dataset {repo} (split {cfg.hf_split})"
        df = read_tables(download_split(repo, cfg.hf_split, cache_dir))
    if len(df) == 0:
        raise DataError(f"{where}: no rows")
    require_columns(df, fmt.columns, where)
    texts, labels, ok = fmt.build(df, np.random.default_rng(DATA_SEED), where)
    data = TaskData(
        name=cfg.name,
        texts=texts,
        labels=np.asarray(labels, dtype=np.int64),
        ids=[f"{cfg.hf_split}/{i}" for i in range(len(df))],
        num_labels=2,
        label_names=list(fmt.label_names),
    )
    if not all(ok):
        data = data.subset(np.asarray(ok), reason="no valid right or wrong answer (unlabelled)")
    return data
