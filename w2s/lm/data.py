"""Generative tasks: prompts with reference responses (and every accepted answer), formatted
for a chat model and tokenized for supervised fine-tuning with the loss on the response only.

Sources: a BIG-bench ``task.json`` whose examples carry ``target`` strings (the first is the
reference, all are accepted; an example with only ``target_scores`` answers its best choice),
or a local ``.jsonl`` / ``.csv`` / ``.parquet`` with columns ``prompt`` and ``response``, and
optionally ``id`` and ``answers`` (a list, or in CSV a JSON list; the response is always
accepted too). Errors name the file and row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2s.data.bigbench import read_examples
from w2s.data.io import read_table, require_columns
from w2s.data.tasks import DataError


@dataclass
class GenData:
    name: str
    ids: list[str]
    prompts: list[str]
    responses: list[str]  # the reference each SFT run learns
    answers: list[list[str]]  # every accepted answer, for exact match

    def __len__(self) -> int:
        return len(self.ids)


def read_bigbench_generative(path: str | Path, name: str | None = None) -> GenData:
    path = Path(path)
    exs = read_examples(path)
    answers = [list(e.targets) or [e.answer] for e in exs]
    return GenData(
        name=name or path.parent.name,
        ids=[str(i) for i in range(len(exs))],
        prompts=[e.input for e in exs],
        responses=[a[0] for a in answers],
        answers=answers,
    )


def strings_column(value, path: Path, row: int, column: str) -> list[str]:
    if isinstance(value, str) and column == "answers":
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: row {row}: answers {value!r} is not a JSON list") from err
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{path}: row {row}: {column} must be a list of strings, not {value!r}")
    return value


def read_local_generative(path: str | Path, name: str | None = None) -> GenData:
    path = Path(path).expanduser()
    df = read_table(path, csv_dtype=str)  # a CSV response "5" is text, not the number 5
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    require_columns(df, ("prompt", "response"), path)
    prompts, responses, answers = [], [], []
    for i, row in enumerate(df.to_dict("records")):
        for col in ("prompt", "response"):
            if not isinstance(row[col], str) or not row[col].strip():
                raise DataError(f"{path}: row {i}: {col} {row[col]!r} is not a non-empty string")
        extra = strings_column(row["answers"], path, i, "answers") if "answers" in df.columns else []
        prompts.append(row["prompt"])
        responses.append(row["response"])
        answers.append([row["response"], *(a for a in extra if a != row["response"])])
    ids = [str(v) for v in df["id"]] if "id" in df.columns else [str(i) for i in range(len(df))]
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise DataError(f"{path}: row {i}: id {key!r} repeats row {seen[key]}")
        seen[key] = i
    return GenData(name or path.stem, ids, prompts, responses, answers)


def format_prompts(tokenizer, prompts: list[str], chat: bool | None = None) -> list[str]:
    """Each prompt as one user turn of the tokenizer's chat template, ending where the assistant
    answers (``chat`` None: when the tokenizer has a template; True: require one; False: raw)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise ValueError("chat formatting asked for, but the tokenizer has no chat_template")
    if not (has_template if chat is None else chat):
        return list(prompts)
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


@dataclass
class SFTBatch:
    input_ids: np.ndarray  # [N, S] int32, right-padded with pad_id
    attention_mask: np.ndarray  # [N, S]
    loss_mask: np.ndarray  # [N, S]: 1 at response tokens (and the closing EOS), the targets
    prompt_lengths: np.ndarray  # [N]
    truncated: int  # rows whose response was cut to fit max_length


def sft_tokenize(
    tokenizer,
    prompts: list[str],
    responses: list[str],
    max_length: int,
    *,
    eos_id: int | None,
    pad_id: int = 0,
) -> SFTBatch:
    """Prompt tokens then response tokens (+ EOS), tokenized apart so the boundary is exact; the
    loss covers the response. A prompt that leaves no room for a response token is refused."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(responses, add_special_tokens=False)["input_ids"]
    n = len(prompts)
    ids = np.full((n, max_length), pad_id, np.int32)
    attn = np.zeros((n, max_length), np.int32)
    loss = np.zeros((n, max_length), np.int32)
    plen = np.zeros(n, np.int32)
    truncated = 0
    for i, (p, r) in enumerate(zip(p_ids, r_ids, strict=True)):
        r = [*r, eos_id] if eos_id is not None else list(r)
        if len(p) + 1 > max_length:
            raise DataError(
                f"row {i}: the prompt has {len(p)} tokens, leaving no room for a response "
                f"within max_length={max_length}"
            )
        if len(p) + len(r) > max_length:
            r, truncated = r[: max_length - len(p)], truncated + 1
        seq = [*p, *r]
        ids[i, : len(seq)] = seq
        attn[i, : len(seq)] = 1
        loss[i, len(p) : len(seq)] = 1
        plen[i] = len(p)
    return SFTBatch(ids, attn, loss, plen, truncated)


def trim(rows: SFTBatch, room: int = 0, multiple: int = 8) -> SFTBatch:
    """The same rows without the all-pad columns past the longest row (or past the longest
    prompt plus ``room`` tokens the step may generate), rounded up to ``multiple``: a task whose
    rows are far shorter than ``task.max_length`` then trains and scores on short arrays."""
    width = rows.input_ids.shape[1]
    used = int(rows.attention_mask.sum(1).max(initial=1))
    need = max(used, int(rows.prompt_lengths.max(initial=0)) + room)
    keep = min(width, -(-need // multiple) * multiple)
    if keep == width:
        return rows
    return SFTBatch(rows.input_ids[:, :keep], rows.attention_mask[:, :keep],
                    rows.loss_mask[:, :keep], rows.prompt_lengths, rows.truncated)
