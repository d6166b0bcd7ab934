"""A task's examples in one shape, and the registry that maps ``task.kind`` to a loader.

Every loader (HF formats, BIG-bench, local files) returns a :class:`TaskData`, so splitting,
tokenization and training never need to know where the examples came from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from w2s.config import TaskConfig

#: Seed of the coin flips that turn multiple-choice data into binary examples. Fixed (not the
#: run's seed) so that every run of a task sees the very same texts and labels.
DATA_SEED = 0


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
    ``cache_dir``."""
    loader = _LOADERS.get(cfg.kind)
    if loader is None:
        raise ValueError(
            f"unknown task kind {cfg.kind!r}; supported kinds: {', '.join(supported_kinds())}"
        )
    return loader(cfg, Path(cache_dir).expanduser())
