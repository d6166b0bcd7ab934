"""A task's examples in one shape, and the registry that maps ``task.kind`` to a loader.

Every loader (HF formats, BIG-bench, local files) returns a :class:`TaskData`, so splitting,
tokenization and training never need to know where the examples came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig

#: Seed of the coin flips that turn multiple-choice data into binary examples. Fixed (not the
#: run's seed) so that every run of a task sees the very same texts and labels.
DATA_SEED = 0

#: ``TaskData.dropped`` reasons of ``task.dedup``: later copies of a text with the same label as
#: its first copy, and later copies with a different label (the first copy is kept either way).
DUPLICATE_REASON = "duplicate text"
CONFLICT_REASON = "duplicate text with a different label"

log = logging.getLogger("w2s.data")


class DataError(ValueError):
    """Bad or missing task data; the message names the file (and row or column) at fault."""


@dataclass
class TaskData:
    """A task's examples: formatted model inputs with integer labels and stable ids."""

    name: str
    texts: list[str]
    labels: np.ndarray  # int64, in 0..num_labels-1
    ids: list[str]  # unique, stable across runs (used to join predictions)
    num_labels: int
    label_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> examples removed

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.texts)
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise ValueError(
                f"task {self.name!r}: {n} texts, {self.labels.shape} labels and "
                f"{len(self.ids)} ids; all must have one entry per example"
            )
        if len(self.label_names) != self.num_labels:
            raise ValueError(
                f"task {self.name!r}: {len(self.label_names)} label names "
                f"for {self.num_labels} labels"
            )
        if n and (self.labels.min() < 0 or self.labels.max() >= self.num_labels):
            raise ValueError(f"task {self.name!r}: labels must lie in 0..{self.num_labels - 1}")
        if len(set(self.ids)) != n:
            raise ValueError(f"task {self.name!r}: example ids are not unique")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_duplicates(self) -> int:
        """Copies of an earlier text removed by ``task.dedup`` (any label)."""
        return self.dropped.get(DUPLICATE_REASON, 0) + self.dropped.get(CONFLICT_REASON, 0)

    @property
    def n_label_conflicts(self) -> int:
        """The part of ``n_duplicates`` whose label differed from the kept first copy's."""
        return self.dropped.get(CONFLICT_REASON, 0)

    def class_counts(self) -> np.ndarray:
        """Examples per label, length ``num_labels``."""
        return np.bincount(self.labels, minlength=self.num_labels)

    def subset(self, mask_or_indices: np.ndarray | list, reason: str | None = None) -> TaskData:
        """Examples picked by a boolean mask or by integer indices (in the order given).

        With ``reason``, the number of examples left out is added to ``dropped[reason]``, so a
        later "no examples left" error can say what removed them.
        """
        sel = np.asarray(mask_or_indices)
        if sel.dtype == bool:
            if sel.shape != (len(self),):
                raise ValueError(f"mask of shape {sel.shape} for {len(self)} examples")
            idx = np.flatnonzero(sel)
        else:
            idx = sel.astype(np.int64).reshape(-1)
        dropped = dict(self.dropped)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + len(self) - len(np.unique(idx))
        return replace(
            self,
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx],
            ids=[self.ids[i] for i in idx],
            dropped=dropped,
        )


def drop_duplicates(data: TaskData) -> TaskData:
    """Keep the first of identical texts (exact string equality of the model inputs), in the
    examples' order; the copies dropped are counted in ``dropped`` under ``DUPLICATE_REASON``,
    or ``CONFLICT_REASON`` when a copy's label differs from the first copy's."""
    first: dict[str, int] = {}
    keep: list[int] = []
    conflicts = 0
    for i, text in enumerate(data.texts):
        j = first.setdefault(text, i)
        if j == i:
            keep.append(i)
        elif data.labels[j] != data.labels[i]:
            conflicts += 1
    n_dup = len(data) - len(keep)
    if n_dup == 0:
        log.info("task %s: no duplicate texts among %d examples", data.name, len(data))
        return data
    out = data.subset(np.asarray(keep, dtype=np.int64))
    for reason, n in ((DUPLICATE_REASON, n_dup - conflicts), (CONFLICT_REASON, conflicts)):
        if n:
            out.dropped[reason] = out.dropped.get(reason, 0) + n
    log.info(
        "task %s: dropped %d duplicate texts (%d of them with a different label), "
        "kept the first copy of each: %d of %d examples left (task.dedup)",
        data.name,
        n_dup,
        conflicts,
        len(out),
        len(data),
    )
    if conflicts:
        log.warning(
            "task %s: %d duplicate texts have a different label than their first copy; "
            "the first copy's label was kept",
            data.name,
            conflicts,
        )
    return out


Loader = Callable[[TaskConfig, Path], TaskData]
_LOADERS: dict[str, Loader] = {}


def register_loader(*kinds: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``load_task`` call this function for ``task.kind`` in ``kinds``."""

    def deco(fn: Loader) -> Loader:
        for kind in kinds:
            _LOADERS[kind] = fn
        return fn

    return deco


def supported_kinds() -> list[str]:
    return sorted(_LOADERS)


def load_task(cfg: TaskConfig, cache_dir: str | Path) -> TaskData:
    """Load the task ``cfg`` describes; downloads (HF) or cached files (BIG-bench) live in
    ``cache_dir``. With ``task.dedup`` only the first copy of identical texts is kept (before
    any split is drawn, so no text can be in two splits)."""
    loader = _LOADERS.get(cfg.kind)
    if loader is None:
        raise ValueError(
            f"unknown task kind {cfg.kind!r}; supported kinds: {', '.join(supported_kinds())}"
        )
    data = loader(cfg, Path(cache_dir).expanduser())
    return drop_duplicates(data) if cfg.dedup else data
