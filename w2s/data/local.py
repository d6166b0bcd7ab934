"""A user's own task: a ``.jsonl``, ``.csv`` or ``.parquet`` file with columns ``text`` and
``label`` (an integer class, from 0) and optionally ``id``.

Errors name the file and, for a bad cell, its row, counted from 0 over data rows (a CSV header is
not a row). ``num_labels`` is ``task.num_labels`` when set (labels must then lie below it), else
the largest label + 1, and at least 2. ``task.classes``, when set, names the labels in order
(and fixes their number). Without an ``id`` column the ids are the row numbers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig
from w2s.data.io import read_table, require_columns
from w2s.data.tasks import DataError, TaskData, register_loader


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and np.isnan(value))


def as_int(value: object) -> int | None:
    """``value`` as an int if it is one, else None. Integral floats (a CSV column with a blank
    cell turns float) and digit strings (a CSV column with a non-number turns to strings) count."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, str):
        text = value.strip()
        return int(text) if re.fullmatch(r"[+-]?[0-9]+", text) else None
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _labels(values: list[object], path: Path, num_labels: int | None) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        label = as_int(value)
        if label is None:
            raise DataError(f"{path}: row {i}: label {value!r} is not an integer")
        if label < 0:
            raise DataError(f"{path}: row {i}: label {label} is negative")
        if num_labels is not None and label >= num_labels:
            raise DataError(
                f"{path}: row {i}: label {label} is out of range 0..{num_labels - 1} "
                f"(the task declares {num_labels} labels in task.num_labels or task.classes)"
            )
        out[i] = label
    return out


def _ids(values: list[object], path: Path) -> list[str]:
    ids: list[str] = []
    first: dict[str, int] = {}
    for i, value in enumerate(values):
        if _missing(value):
            raise DataError(f"{path}: row {i}: id is missing")
        key = str(value)
        if key in first:
            raise DataError(f"{path}: row {i}: id {key!r} repeats row {first[key]}")
        first[key] = i
        ids.append(key)
    return ids


@register_loader("local")
def load_local(cfg: TaskConfig, cache_dir: Path) -> TaskData:
    """Read and check ``task.path``; every problem is reported with file, row and column."""
    if not cfg.path:
        raise DataError(
            f"task {cfg.name!r} (kind local): set task.path to a .jsonl, .csv or .parquet file "
            "with columns text and label"
        )
    path = Path(cfg.path).expanduser()
    declared = cfg.num_labels
    names = [str(c) for c in cfg.classes] if cfg.classes else None
    if names is not None:
        if declared is not None and declared != len(names):
            raise DataError(f"task.num_labels={declared} but task.classes has {len(names)} names")
        declared = len(names)
    if declared is not None and declared < 2:
        raise DataError(f"task {cfg.name!r}: task.num_labels must be at least 2, not {declared}")
    df = read_table(path)
    if len(df) == 0:
        raise DataError(f"{path}: empty file (no rows)")
    require_columns(df, ("text", "label"), path)
    texts = df["text"].tolist()
    for i, text in enumerate(texts):
        if _missing(text):
            raise DataError(f"{path}: row {i}: text is missing")
        if not isinstance(text, str):
            raise DataError(f"{path}: row {i}: text {text!r} is not a string")
    labels = _labels(df["label"].tolist(), path, declared)
    num_labels = declared or max(int(labels.max()) + 1, 2)
    ids = _ids(df["id"].tolist(), path) if "id" in df.columns else [str(i) for i in range(len(df))]
    return TaskData(
        name=cfg.name,
        texts=texts,
        labels=labels,
        ids=ids,
        num_labels=num_labels,
        label_names=names or [str(k) for k in range(num_labels)],
    )
