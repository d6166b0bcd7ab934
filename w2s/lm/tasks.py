"""Generative tasks from a task config (``task.kind`` bigbench_gen | local_gen | arithmetic),
ready to split.

Prompts are formatted once (the tokenizer's chat template, ``task.chat``) and measured in tokens:
a prompt that leaves no room for a response token within ``task.max_length`` is dropped, and
with ``task.overlong=drop`` so is an example whose reference does not fit after its prompt
(``truncate`` cuts such references in SFT instead, counted by the runs). Identical prompts keep
their first copy (``task.dedup``). Every drop is counted in ``dropped`` by reason, as for
classification tasks, so that a run's record says what it never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig
from w2s.data.bigbench import task_file
from w2s.data.tasks import DUPLICATE_REASON, DataError
from w2s.lm.data import GenData, format_prompts, read_bigbench_generative, read_local_generative

GENERATIVE_KINDS = ("bigbench_gen", "local_gen", "arithmetic")
PROMPT_TOO_LONG = "prompt leaves no room for a response within task.max_length"
REFERENCE_TOO_LONG = "prompt and reference longer than task.max_length (task.overlong=drop)"


def is_generative(task: TaskConfig) -> bool:
    return task.kind in GENERATIVE_KINDS


@dataclass
class GenTask:
    """A generative task after formatting and drops: ``prompts`` are chat-formatted."""

    data: GenData
    prompts: list[str]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.data.name

    @property
    def ids(self) -> list[str]:
        return self.data.ids

    def __len__(self) -> int:
        return len(self.data)


OPERATIONS = {"addition": "plus", "subtraction": "minus", "multiplication": "times"}
ARITHMETIC_POOL = 20_000  # problems drawn (fewer where the digits allow fewer)


def arithmetic(source: str, name: str | None = None, seed: int = 0) -> GenData:
    """Questions in BIG-bench ``arithmetic``'s format ("What is 29 plus 53?" -> "82") for a
    sub-task named as there, ``<d>_digit_<operation>``, drawn without repeats from a fixed
    seed: the same task on every machine, made here (not BIG-bench's own examples)."""
    digits, _, op = source.partition("_digit_")
    if not digits.isdigit() or op not in OPERATIONS or not 1 <= int(digits) <= 5:
        raise DataError(f"arithmetic task source {source!r}: use <d>_digit_<operation> with d in "
                        f"1..5 and operation in {', '.join(OPERATIONS)}, e.g. 2_digit_addition")
    d = int(digits)
    lo, hi = (0 if d == 1 else 10 ** (d - 1)), 10**d
    n = min(ARITHMETIC_POOL, (hi - lo) ** 2)
    rng = np.random.default_rng(seed)
    flat = rng.choice((hi - lo) ** 2, size=n, replace=False)
    a, b = lo + flat // (hi - lo), lo + flat % (hi - lo)
    value = {"addition": a + b, "subtraction": a - b, "multiplication": a * b}[op]
    return GenData(
        name or f"arithmetic_{source}",
        [f"{x}{OPERATIONS[op][0]}{y}" for x, y in zip(a, b, strict=True)],
        [f"What is {x} {OPERATIONS[op]} {y}?" for x, y in zip(a, b, strict=True)],
        [str(v) for v in value],
        [[str(v)] for v in value],
    )


def _read(cfg: TaskConfig, cache_dir: Path) -> GenData:
    if cfg.kind == "arithmetic":
        return arithmetic(cfg.source or "", cfg.name)
    if cfg.kind == "local_gen":
        if not cfg.path:
            raise DataError(f"task {cfg.name!r}: kind local_gen needs task.path to a data file")
        return read_local_generative(cfg.path, cfg.name)
    path = task_file(cfg, cache_dir)
    raw = json.loads(path.read_text(encoding="utf-8"))
    examples = raw.get("examples") if isinstance(raw, dict) else None
    if examples and not any("target" in ex for ex in examples if isinstance(ex, dict)):
        raise DataError(
            f"{path}: no example has a 'target' string, so this is not a generative task; "
            "use task.kind=bigbench to classify its choices"
        )
    return read_bigbench_generative(path, cfg.name)


def subset_rows(data, keep: list[int]):
    """The same dataclass (``GenData``, ``PairData``) with only rows ``keep`` of each per-row
    list field (those as long as ``ids``)."""
    n = len(data.ids)
    rows = {f.name: [v[i] for i in keep] for f in fields(data)
            if isinstance(v := getattr(data, f.name), list) and len(v) == n}
    return replace(data, **rows)


def load_generative(cfg: TaskConfig, cache_dir: str | Path, tokenizer, eos: bool = True) -> GenTask:
    """The task's examples with formatted prompts, after the drops the module doc lists."""
    if cfg.balance:
        raise ValueError(f"task {cfg.name!r}: task.balance needs class labels; a generative "
                         "task has none (set task.balance=false)")
    if cfg.overlong not in ("truncate", "drop"):
        raise ValueError(f"task.overlong must be truncate or drop, not {cfg.overlong!r}")
    data = _read(cfg, Path(cache_dir).expanduser())
    empty = [i for i, p in enumerate(data.prompts) if not p.strip()]
    if empty:
        where = cfg.path or cfg.source
        raise DataError(f"task {cfg.name!r} ({where}): example {empty[0]} (id "
                        f"{data.ids[empty[0]]!r}) has an empty prompt ({len(empty)} in all)")
    prompts = format_prompts(tokenizer, data.prompts, cfg.chat)
    p_len = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    r_len = [len(x) + int(eos) for x in
             tokenizer(data.responses, add_special_tokens=False)["input_ids"]]
    dropped: dict[str, int] = {}
    keep = kept_rows(cfg, prompts, p_len, r_len, REFERENCE_TOO_LONG, dropped)
    return GenTask(subset_rows(data, keep), [prompts[i] for i in keep], dropped)


def kept_rows(cfg: TaskConfig, prompts: list[str], p_len: list[int], r_len: list[int],
              too_long: str, dropped: dict[str, int]) -> list[int]:
    """The rows that stay, counting the others in ``dropped`` by reason: a prompt with no room
    for a response token; with ``overlong=drop``, prompt + response (``r_len``, with EOS) over
    ``max_length`` (counted as ``too_long``); a repeated prompt (``dedup``)."""
    seen: set[str] = set()
    keep = []
    for i, (p, lp, lr) in enumerate(zip(prompts, p_len, r_len, strict=True)):
        if lp + 1 > cfg.max_length:
            reason = PROMPT_TOO_LONG
        elif cfg.overlong == "drop" and lp + lr > cfg.max_length:
            reason = too_long
        elif cfg.dedup and p in seen:
            reason = DUPLICATE_REASON
        else:
            seen.add(p)
            keep.append(i)
            continue
        dropped[reason] = dropped.get(reason, 0) + 1
    if not keep:
        raise DataError(f"task {cfg.name!r}: every example was dropped ({dropped})")
    return keep


def split_rows(task: GenTask, index: np.ndarray) -> tuple[list[str], list[str], list[list[str]]]:
    """(formatted prompts, references, accepted answers) of the rows ``index``."""
    d = task.data
    return ([task.prompts[i] for i in index], [d.responses[i] for i in index],
            [d.answers[i] for i in index])
