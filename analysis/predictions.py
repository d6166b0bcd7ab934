"""Per-split prediction arrays, read once per run and shared by agreement, bootstrap and cascade.

Reading parquet is the slow part of the analysis, so files are read on demand, in a small thread
pool (pyarrow releases the GIL while decoding), and only the splits the analysis uses are kept.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.runs import PREDICTIONS_FILE

SPLITS_USED = ("test", "val")


@dataclass(frozen=True)
class SplitPredictions:
    """One split of one run: example ids, gold labels and predicted probabilities ``[n, k]``."""

    ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        """Max predicted probability: the confidence a cascade thresholds on."""
        return self.probs.max(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def take(self, index: np.ndarray) -> SplitPredictions:
        return SplitPredictions(self.ids[index], self.labels[index], self.probs[index])


def _probs_matrix(column: pa.ChunkedArray, n: int) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if n == 0:
        return np.zeros((0, 0))
    if arr.null_count:
        raise ValueError("probs has null rows")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise ValueError("probs rows have different lengths")
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return flat.reshape(n, int(lengths[0]))


def read_splits(run_dir: str | Path, splits: Iterable[str] = SPLITS_USED) -> dict[str, SplitPredictions]:
    """The requested splits of a run's predictions (a split with no rows is left out)."""
    table = pq.read_table(Path(run_dir) / PREDICTIONS_FILE, columns=["id", "split", "label", "probs"])
    out = {}
    for split in splits:
        part = table.filter(pc.equal(table["split"], split))
        n = part.num_rows
        if n == 0:
            continue
        ids = part["id"].to_numpy().astype(str)
        labels = part["label"].to_numpy().astype(np.int64)
        out[split] = SplitPredictions(ids, labels, _probs_matrix(part["probs"], n))
    return out


class PredictionStore:
    """Cache of `read_splits` results by run directory; errors are kept, not raised."""

    def __init__(self, max_workers: int | None = None) -> None:
        self._cache: dict[str, dict[str, SplitPredictions] | Exception] = {}
        self.max_workers = max_workers or min(4, (os.cpu_count() or 1) + 1)

    def _read(self, run_dir: str) -> dict[str, SplitPredictions] | Exception:
        try:
            return read_splits(run_dir)
        except Exception as e:  # noqa: BLE001 - a bad file must not stop the analysis
            return e

    def prefetch(self, run_dirs: Iterable[str]) -> None:
        todo = sorted({d for d in run_dirs if d not in self._cache})
        if not todo:
            return
        with ThreadPoolExecutor(self.max_workers) as pool:
            for run_dir, result in zip(todo, pool.map(self._read, todo), strict=True):
                self._cache[run_dir] = result

    def get(self, run_dir: str, split: str = "test") -> SplitPredictions | None:
        """The split, or None if the file is unreadable or has no such split."""
        if run_dir not in self._cache:
            self._cache[run_dir] = self._read(run_dir)
        result = self._cache[run_dir]
        return None if isinstance(result, Exception) else result.get(split)

    def errors(self) -> dict[str, str]:
        return {d: f"{type(e).__name__}: {e}" for d, e in self._cache.items() if isinstance(e, Exception)}


def align(*preds: SplitPredictions) -> tuple[SplitPredictions, ...]:
    """Restrict runs to their common examples, in the first run's order; labels must agree."""
    first = preds[0]
    if all(len(p) == len(first) and np.array_equal(p.ids, first.ids) for p in preds[1:]):
        aligned = preds
    else:
        common = first.ids
        for p in preds[1:]:
            common = common[np.isin(common, p.ids)]
        aligned = []
        for p in preds:
            order = np.argsort(p.ids, kind="stable")
            pos = order[np.searchsorted(p.ids, common, sorter=order)]
            aligned.append(p.take(pos))
        aligned = tuple(aligned)
    for p in aligned[1:]:
        if not np.array_equal(p.labels, aligned[0].labels):
            raise ValueError("runs disagree on the gold labels of the same example ids")
    return tuple(aligned)
