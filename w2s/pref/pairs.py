"""Pairwise preference tasks from a task config (``task.kind`` local_pairs | hh_pairs |
bigbench_pairs | arithmetic_pairs): a prompt with a chosen (preferred) and a rejected response.

Sources:

- ``local_pairs``: a ``.jsonl`` / ``.csv`` / ``.parquet`` with columns ``prompt``, ``chosen``,
  ``rejected``, and optionally ``id`` and ``answers`` (a list, or in CSV a JSON list; the chosen
  response is always accepted too), read as ``local_gen`` files are.
- ``hh_pairs``: Anthropic HH-RLHF's schema, two full dialogues ``chosen`` and ``rejected`` that
  share everything up to their last assistant turn; that shared part is the prompt.
- ``bigbench_pairs``: a BIG-bench ``task.json``; the answer is chosen, a wrong one (a lower-scored
  choice, or another example's answer that this example does not accept) is rejected.
- ``arithmetic_pairs``: ``w2s.lm.tasks.arithmetic``'s questions; the right number is chosen, a
  near miss (off by 1 to 3, so its units digit differs) is rejected: a judge must really compute.

BIG-bench and arithmetic pairs are checkable (``answers`` holds every accepted answer, for exact
match of a policy's generations); HH pairs are not. Prompts are formatted and measured as for
generative tasks (``w2s.lm.tasks``), and every drop is counted by reason in ``dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig
from w2s.data.bigbench import read_examples, task_file
from w2s.data.io import read_table, require_columns
from w2s.data.tasks import DATA_SEED, DataError
from w2s.lm.data import format_prompts, strings_column
from w2s.lm.tasks import GenTask, arithmetic, kept_rows, subset_rows

PREFERENCE_KINDS = ("local_pairs", "hh_pairs", "bigbench_pairs", "arithmetic_pairs")
PAIR_TOO_LONG = "prompt and longer response longer than task.max_length (task.overlong=drop)"
NO_WRONG_ANSWER = "no wrong answer to pair with"
ASSISTANT = "\n\nAssistant:"
NEAR_MISSES = np.array([-3, -2, -1, 1, 2, 3])


@dataclass
class PairData:
    name: str
    ids: list[str]
    prompts: list[str]  # raw prompts, not chat-formatted
    chosen: list[str]  # the preferred response (ground truth)
    rejected: list[str]
    answers: list[list[str]]  # accepted answers where checkable (BIG-bench, arithmetic), else []
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out by the reader, by reason

    def __len__(self) -> int:
        return len(self.ids)


def is_preference(task: TaskConfig) -> bool:
    return task.kind in PREFERENCE_KINDS


def _unique_ids(ids: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise DataError(f"{path}: row {i}: id {key!r} repeats row {seen[key]}")
        seen[key] = i


def read_local_pairs(path: str | Path, name: str | None = None) -> PairData:
    path = Path(path).expanduser()
    df = read_table(path, csv_dtype=str)  # a CSV response "5" is text, not the number 5
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    require_columns(df, ("prompt", "chosen", "rejected"), path)
    prompts, chosen, rejected, answers = [], [], [], []
    for i, row in enumerate(df.to_dict("records")):
        for col in ("prompt", "chosen", "rejected"):
            if not isinstance(row[col], str) or not row[col].strip():
                raise DataError(f"{path}: row {i}: {col} {row[col]!r} is not a non-empty string")
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{path}: row {i}: chosen and rejected are the same response")
        if "answers" in df.columns:
            extra = strings_column(row["answers"], path, i, "answers")
            if row["rejected"] in extra:
                raise DataError(f"{path}: row {i}: the rejected response is among the answers")
            answers.append([row["chosen"], *(a for a in extra if a != row["chosen"])])
        else:
            answers.append([])
        prompts.append(row["prompt"])
        chosen.append(row["chosen"])
        rejected.append(row["rejected"])
    ids = [str(v) for v in df["id"]] if "id" in df.columns else [str(i) for i in range(len(df))]
    _unique_ids(ids, path)
    return PairData(name or path.stem, ids, prompts, chosen, rejected, answers)


def _split_dialogue(text, path: Path, row: int, column: str) -> tuple[str, str]:
    """(everything up to and including the last assistant cue, the reply after it)."""
    if not isinstance(text, str) or ASSISTANT not in text:
        raise DataError(f"{path}: row {row}: {column} has no {ASSISTANT!r} turn: {text!r:.200}")
    cut = text.rindex(ASSISTANT) + len(ASSISTANT)
    reply = text[cut:].lstrip()
    if not reply:
        raise DataError(f"{path}: row {row}: {column}'s last assistant turn is empty")
    return text[:cut], reply


HH_PROMPTS_DIFFER = "chosen and rejected differ before their last assistant turn"
HH_SAME_RESPONSE = "chosen and rejected give the same response"


def read_hh_pairs(path: str | Path, name: str | None = None) -> PairData:
    """Each row's two dialogues split at their last assistant turn. A row whose two parts
    before it differ (the pair would compare different conversations) or whose two replies are
    the same (nothing to prefer) is left out and counted, as the public data has a few; a row
    that is not an HH dialogue at all is an error naming it."""
    path = Path(path).expanduser()
    return hh_from_frame(read_table(path, csv_dtype=str), path, name or path.stem)


def hh_from_frame(df, path, name: str) -> PairData:
    """``read_hh_pairs`` on rows already read (``path`` names them in errors)."""
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    require_columns(df, ("chosen", "rejected"), path)
    ids, prompts, chosen, rejected = [], [], [], []
    skipped: dict[str, int] = {}
    for i, row in enumerate(df.to_dict("records")):
        p_c, r_c = _split_dialogue(row["chosen"], path, i, "chosen")
        p_r, r_r = _split_dialogue(row["rejected"], path, i, "rejected")
        reason = HH_PROMPTS_DIFFER if p_c != p_r else HH_SAME_RESPONSE if r_c == r_r else None
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        ids.append(str(i))
        prompts.append(p_c)
        chosen.append(r_c)
        rejected.append(r_r)
    return PairData(name, ids, prompts, chosen, rejected, [[] for _ in ids], skipped)


def bigbench_pairs(path: str | Path, name: str | None = None, seed: int = DATA_SEED) -> PairData:
    """The answer against one uniformly drawn wrong answer: a lower-scored choice, or for a
    ``target``-only example another such example's answer outside its accepted targets (never
    an answer it accepts). Examples with no wrong answer are skipped and counted."""
    path = Path(path)
    exs = read_examples(path)
    pool = list(dict.fromkeys(e.answer for e in exs if e.choices is None))
    pick = np.random.default_rng(seed).random(len(exs))  # one draw per example, kept or not
    ids, prompts, chosen, rejected, answers = [], [], [], [], []
    for i, e in enumerate(exs):
        accepted = list(e.targets) or [e.answer]
        wrong = e.wrong if e.wrong is not None else pool
        wrong = [a for a in wrong if a not in accepted]
        if not wrong:
            continue
        ids.append(str(i))
        prompts.append(e.input)
        chosen.append(e.answer)
        rejected.append(wrong[int(pick[i] * len(wrong))])
        answers.append(accepted)
    skipped = {NO_WRONG_ANSWER: len(exs) - len(ids)} if len(exs) > len(ids) else {}
    return PairData(name or path.parent.name, ids, prompts, chosen, rejected, answers, skipped)


DISTRACTORS = ("near", "other")


def arithmetic_pairs(source: str, name: str | None = None, seed: int = 0) -> PairData:
    """``arithmetic(sub_task)``'s questions, the right number against a wrong one; ``source`` is
    ``<sub-task>[:near|:other]``: ``near`` (default) a near miss (off by 1 to 3, so the units
    digit differs and a checker must really add), ``other`` another question's answer (the
    wrong answers BIG-bench's target-only tasks get; magnitude alone often tells them apart)."""
    sub_task, _, distractor = source.partition(":")
    distractor = distractor or "near"
    if distractor not in DISTRACTORS:
        raise DataError(f"arithmetic_pairs source {source!r}: distractor {distractor!r} unknown; "
                        f"use <sub-task>:{' or <sub-task>:'.join(DISTRACTORS)}")
    data = arithmetic(sub_task, name or f"arithmetic_pairs_{source}", seed)
    rng = np.random.default_rng(seed + 1)
    if distractor == "near":
        delta = rng.choice(NEAR_MISSES, size=len(data))
        rejected = [str(int(r) + int(d)) for r, d in zip(data.responses, delta, strict=True)]
    else:
        values = np.array([int(r) for r in data.responses])
        rejected = []
        for v in values:
            while True:  # another question's answer that is not this one's
                w = values[rng.integers(len(values))]
                if w != v:
                    rejected.append(str(w))
                    break
    return PairData(
        data.name,
        data.ids,
        data.prompts,
        data.responses,
        rejected,
        [[r] for r in data.responses],
    )


@dataclass
class PrefTask(GenTask):
    """A preference task after formatting and drops: ``prompts`` are chat-formatted; ``data``
    holds the pairs (``name``, ``ids`` and ``len`` as for a generative task)."""

    data: PairData


def _read(cfg: TaskConfig, cache_dir: Path) -> PairData:
    if cfg.kind == "arithmetic_pairs":
        return arithmetic_pairs(cfg.source or "", cfg.name)
    if cfg.kind == "bigbench_pairs":
        return bigbench_pairs(task_file(cfg, cache_dir), cfg.name)
    if cfg.kind == "hh_pairs" and not cfg.path and cfg.source:
        from w2s.data.hf import download_split
        from w2s.data.io import read_tables

        files = download_split(cfg.source, cfg.hf_split, cache_dir)
        return hh_from_frame(read_tables(files), f"{cfg.source} ({cfg.hf_split})", cfg.name)
    if cfg.kind in ("local_pairs", "hh_pairs"):
        if not cfg.path:
            raise DataError(f"task {cfg.name!r}: kind {cfg.kind} needs task.path to a data file")
        read = read_local_pairs if cfg.kind == "local_pairs" else read_hh_pairs
        return read(cfg.path, cfg.name)
    raise DataError(f"task {cfg.name!r}: kind {cfg.kind!r} is not one of {PREFERENCE_KINDS}")


def _lengths(tokenizer, texts: list[str]) -> list[int]:
    return [len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def load_pairs(cfg: TaskConfig, cache_dir: str | Path, tokenizer) -> PrefTask:
    """The task's pairs with formatted prompts, after the drops the module doc lists: a prompt
    with no room for a response token; with ``task.overlong=drop``, a pair whose longer response
    (+ EOS) does not fit after its prompt; repeated prompts (``task.dedup``)."""
    if cfg.balance:
        raise ValueError(
            f"task {cfg.name!r}: task.balance needs class labels; a preference task has none "
            "(set task.balance=false)"
        )
    if cfg.overlong not in ("truncate", "drop"):
        raise ValueError(f"task.overlong must be truncate or drop, not {cfg.overlong!r}")
    data = _read(cfg, Path(cache_dir).expanduser())
    empty = [i for i, p in enumerate(data.prompts) if not p.strip()]
    if empty:
        where = cfg.path or cfg.source
        raise DataError(
            f"task {cfg.name!r} ({where}): example {empty[0]} (id {data.ids[empty[0]]!r}) has "
            f"an empty prompt ({len(empty)} in all)"
        )
    if not len(data):
        raise DataError(
            f"task {cfg.name!r}: no pairs (left out: {data.skipped})"
        )
    prompts = format_prompts(tokenizer, data.prompts, cfg.chat)
    p_len = _lengths(tokenizer, prompts)
    c_len, r_len = _lengths(tokenizer, data.chosen), _lengths(tokenizer, data.rejected)
    dropped: dict[str, int] = dict(data.skipped)
    longer = [max(c, r) + 1 for c, r in zip(c_len, r_len, strict=True)]  # + EOS
    keep = kept_rows(cfg, prompts, p_len, longer, PAIR_TOO_LONG, dropped)
    return PrefTask(subset_rows(data, keep), [prompts[i] for i in keep], dropped)


def split_pairs(task: PrefTask, index) -> tuple[list[str], list[str], list[str], list[list[str]]]:
    """(formatted prompts, chosen, rejected, accepted answers) of the rows ``index``."""
    d = task.data
    return (
        [task.prompts[i] for i in index],
        [d.chosen[i] for i in index],
        [d.rejected[i] for i in index],
        [d.answers[i] for i in index],
    )
