"""BIG-bench JSON tasks (``task.json``) as classification or binary right/wrong-answer tasks.

Each example has an ``input`` and either ``target_scores`` (choice -> score; the best-scored
choice is the answer, the first one on ties) or ``target`` (a string or a list of strings; the
first is the answer). Three modes, picked in this order:

1. ``task.classes`` is set: keep the examples whose answer is one of the classes; the label is
   its index in ``task.classes`` (e.g. ``multiemo/hotels_sentence_en`` with
   ``[negative, positive]`` drops the neutral and ambivalent sentences).
2. Every example has ``target_scores`` over the same set of choices: classification over that
   set, classes ordered as in the first example.
3. Otherwise (choices differ per question, or only ``target`` is given): binary. A coin flip
   (seeded by ``DATA_SEED``) pairs the input with the right answer (label 1) or a uniformly drawn
   wrong one (label 0), as ``"{input}\\nAnswer: {choice}"``. Wrong answers are the lower-scored
   choices, or for ``target``-only examples the other examples' answers.

The text is the example's ``input`` alone. The task-level ``task_prefix`` is not prepended: it is
the same for every example, so a fine-tuned classifier learns nothing from it, and it costs
tokens (for ``hotels_sentence_en`` it even lists the classes mode 1 removed).

Ids are the example's position in ``examples`` as a string.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig
from w2s.data.tasks import DATA_SEED, DataError, TaskData, register_loader

log = logging.getLogger("w2s.data")


@dataclass
class Example:
    input: str
    answer: str
    choices: list[str] | None  # None: only ``target`` was given
    wrong: list[str] | None  # lower-scored choices; None: only ``target`` was given
    targets: tuple[str, ...] = ()  # every accepted ``target`` (never drawn as a wrong answer)


def task_file(cfg: TaskConfig, cache_dir: Path) -> Path:
    """``task.path`` (a task.json or its folder), else ``<cache>/bigbench/<source>/task.json``."""
    if cfg.path:
        path = Path(cfg.path).expanduser()
        path = path / "task.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"BIG-bench task file {path} (task.path) not found")
        return path
    if not cfg.source:
        raise DataError(
            f"task {cfg.name!r}: set task.source to a BIG-bench task path such as "
            "multiemo/hotels_sentence_en, or task.path to a task.json"
        )
    path = cache_dir / "bigbench" / cfg.source / "task.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"BIG-bench task file {path} not found; run `w2s-fetch --only bigbench "
            f"--cache-dir {cache_dir}` or set task.path to a task.json"
        )
    return path


def _parse(ex: object, i: int, path: Path) -> Example:
    if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
        raise DataError(f"{path}: example {i} has no string 'input'")
    scores = ex.get("target_scores")
    if isinstance(scores, dict) and scores:
        try:
            values = {str(k): float(v) for k, v in scores.items()}
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: example {i}: target_scores must be numbers") from err
        best = max(values.values())
        answer = next(k for k, v in values.items() if v == best)
        wrong = [k for k, v in values.items() if v < best]
        return Example(ex["input"], answer, list(values), wrong)
    target = ex.get("target")
    targets = [target] if isinstance(target, str) else target
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        return Example(ex["input"], targets[0], None, None, tuple(targets))
    raise DataError(f"{path}: example {i} has neither 'target_scores' nor a string 'target'")


def read_examples(path: Path) -> list[Example]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err})") from err
    examples = raw.get("examples") if isinstance(raw, dict) else None
    if not examples:
        subtasks = sorted(p.parent.name for p in path.parent.glob("*/task.json"))
        more = f"; it groups the subtasks {', '.join(subtasks)}" if subtasks else ""
        raise DataError(f"{path}: no examples{more}")
    return [_parse(ex, i, path) for i, ex in enumerate(examples)]


def _by_classes(cfg: TaskConfig, exs: list[Example], path: Path) -> TaskData:
    classes = [str(c) for c in cfg.classes or []]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise DataError(f"task.classes {classes} must hold at least two distinct choices")
    keep = [i for i, e in enumerate(exs) if e.answer in classes]
    if not keep:
        found = ", ".join(f"{a!r} ({n})" for a, n in Counter(e.answer for e in exs).most_common(8))
        raise DataError(f"{path}: no example's answer is in task.classes {classes}; found {found}")
    data = TaskData(
        name=cfg.name,
        texts=[e.input for e in exs],
        labels=np.array([classes.index(e.answer) if e.answer in classes else 0 for e in exs]),
        ids=[str(i) for i in range(len(exs))],
        num_labels=len(classes),
        label_names=classes,
    )
    counts = np.bincount(data.labels[keep], minlength=len(classes))
    missing = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    if missing:
        log.warning("%s: no example has the answer %s", path, ", ".join(map(repr, missing)))
    return data.subset(np.asarray(keep), reason="answer not in task.classes")


def _by_choice_set(cfg: TaskConfig, exs: list[Example], path: Path) -> TaskData:
    classes = exs[0].choices or []
    if len(classes) < 2:
        raise DataError(f"{path}: every example has the single choice {classes}")
    return TaskData(
        name=cfg.name,
        texts=[e.input for e in exs],
        labels=np.array([classes.index(e.answer) for e in exs]),
        ids=[str(i) for i in range(len(exs))],
        num_labels=len(classes),
        label_names=list(classes),
    )


def _right_or_wrong(cfg: TaskConfig, exs: list[Example], path: Path) -> TaskData:
    pool = list(dict.fromkeys(e.answer for e in exs if e.choices is None))
    rng = np.random.default_rng(DATA_SEED)
    heads = rng.random(len(exs)) < 0.5
    pick = rng.random(len(exs))
    texts, labels, ok = [], [], []
    for i, e in enumerate(exs):
        wrong = e.wrong if e.wrong is not None else [a for a in pool if a not in e.targets]
        choice = e.answer if heads[i] else (wrong[int(pick[i] * len(wrong))] if wrong else "")
        texts.append(f"{e.input}\nAnswer: {choice}")
        labels.append(int(heads[i]))
        ok.append(bool(wrong))
    data = TaskData(
        name=cfg.name,
        texts=texts,
        labels=np.array(labels),
        ids=[str(i) for i in range(len(exs))],
        num_labels=2,
        label_names=["incorrect", "correct"],
    )
    if not all(ok):
        data = data.subset(np.asarray(ok), reason="no wrong answer to pair with")
    return data


@register_loader("bigbench")
def load_bigbench(cfg: TaskConfig, cache_dir: Path) -> TaskData:
    """Load a BIG-bench task.json in the mode its config and choices call for (module doc)."""
    path = task_file(cfg, cache_dir)
    exs = read_examples(path)
    if cfg.classes:
        data = _by_classes(cfg, exs, path)
        mode = f"classes {data.label_names}"
    elif all(e.choices is not None for e in exs) and all(
        set(e.choices) == set(exs[0].choices) for e in exs
    ):
        data = _by_choice_set(cfg, exs, path)
        mode = f"classification over {data.label_names}"
    else:
        data = _right_or_wrong(cfg, exs, path)
        mode = "right/wrong answer pairs"
    if data.dropped:
        log.info("%s: dropped %s", path, data.dropped)
    log.info("%s: %d examples, %s", path, len(data), mode)
    return data
