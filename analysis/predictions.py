"""Per-split prediction arrays, read once per run and shared by agreement, bootstrap and cascade.

Reading thousands of small parquet files is the slow part of the analysis, so files are read in a
thread pool, converted to numpy a chunk of files at a time, and only the splits the analysis uses
are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from analysis.runs import PREDICTIONS_FILE

SPLITS_USED = ("test", "val")
COLUMNS = ["id", "split", "label", "probs"]
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int64()),
        ("probs", pa.list_(pa.float64())),
    ]
)
CHUNK_FILES = 256
READ_THREADS = 4


@dataclass(frozen=True)
class SplitPredictions:
    """One split of one run: example ids, gold labels and predicted probabilities ``[n, k]``.

    ``ids`` stay a pyarrow string array: comparing two runs' ids is then one C++ call, and no
    Python string objects are made for the usual case where runs list the same examples.

    A generative run (``w2s.lm.experiment``) has no classes: its rows carry the answer
    (normalised text, what agreement compares), whether it was an exact match, and its
    confidence, ``exp`` of the answer's mean token log-probability (the geometric-mean token
    probability, in (0, 1]). ``probs`` is then ``[n, 0]`` and ``labels`` are 0.
    """

    ids: pa.Array
    labels: np.ndarray
    probs: np.ndarray
    answers: np.ndarray | None = None  # generative runs only, with the two below
    answer_correct: np.ndarray | None = None
    answer_confidence: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def generative(self) -> bool:
        return self.answers is not None

    @cached_property
    def predicted(self) -> np.ndarray:
        return self.answers if self.generative else self.probs.argmax(axis=1)

    @cached_property
    def confidence(self) -> np.ndarray:
        """Max predicted probability (generative: the answer's): what a cascade thresholds on."""
        return self.answer_confidence if self.generative else self.probs.max(axis=1)

    @cached_property
    def correct(self) -> np.ndarray:
        return self.answer_correct if self.generative else self.predicted == self.labels

    def id_strings(self) -> np.ndarray:
        return self.ids.to_numpy(zero_copy_only=False)

    def take(self, index: np.ndarray) -> SplitPredictions:
        extra = {}
        if self.generative:
            extra = {k: getattr(self, k)[index]
                     for k in ("answers", "answer_correct", "answer_confidence")}
        return SplitPredictions(
            self.ids.take(pa.array(index)), self.labels[index], self.probs[index], **extra
        )


GENERATIVE_COLUMNS = ["id", "split", "text", "correct", "confidence"]


def _generative_splits(table: pa.Table, splits: tuple[str, ...]) -> dict[str, SplitPredictions]:
    """A generative run's rows (module doc of ``SplitPredictions``), split by split."""
    from w2s.lm.metrics import normalize

    out = {}
    split_col = table["split"].to_numpy(zero_copy_only=False)
    for split in splits:
        rows = np.flatnonzero(split_col == split)
        if len(rows) == 0:
            continue
        t = table.take(pa.array(rows))
        logp = t["confidence"].to_numpy(zero_copy_only=False).astype(np.float64)
        if np.isnan(logp).any() or (logp > 0).any():
            raise ValueError(f"confidence must be a mean log-probability (<= 0) in split {split}")
        n = len(rows)
        out[split] = SplitPredictions(
            t["id"].combine_chunks().cast(pa.string()),
            np.zeros(n, np.int64),
            np.zeros((n, 0)),
            answers=np.array([normalize(x) for x in t["text"].to_pylist()], dtype=object),
            answer_correct=t["correct"].to_numpy(zero_copy_only=False).astype(bool),
            answer_confidence=np.exp(logp),
        )
    return out


def _is_generative(table: pa.Table) -> bool:
    return "correct" in table.column_names and "probs" not in table.column_names


Result = dict[str, SplitPredictions] | Exception


def _by_file(
    table: pa.Table, file_index: np.ndarray, n_files: int, splits: tuple[str, ...]
) -> list[Result]:
    """Split a table holding the rows of several files into per-file, per-split arrays.

    Works on the whole table at once (one numpy conversion per column) and then slices, because
    per-file pyarrow calls dominate the cost when files are small. Rows keep their file order.
    """
    out: list[Result] = [{} for _ in range(n_files)]
    if table.num_rows == 0:
        return out
    value_set = pa.array(splits, pa.string())
    code = pc.index_in(table["split"], value_set=value_set).fill_null(-1).to_numpy()
    probs = table["probs"].combine_chunks()
    valid = ~probs.is_null().to_numpy(zero_copy_only=False)
    lengths = np.where(valid, pc.list_value_length(probs).fill_null(0).to_numpy(), 0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = pc.list_flatten(probs).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    ids = table["id"].combine_chunks()
    labels = table["label"].to_numpy().astype(np.int64, copy=False)
    keep = np.flatnonzero(code >= 0)
    order = keep[np.lexsort((code[keep], file_index[keep]))]  # stable: file, then split
    key = file_index[order] * len(splits) + code[order]
    bounds = np.flatnonzero(np.diff(key)) + 1
    for rows in np.split(order, bounds):
        f, split = int(file_index[rows[0]]), splits[code[rows[0]]]
        if isinstance(out[f], Exception):
            continue
        k = lengths[rows]
        if not valid[rows].all():
            out[f] = ValueError(f"probs has null rows in split {split}")
        elif k.min() != k.max() or k[0] == 0:
            out[f] = ValueError(f"probs rows have different or zero lengths in split {split}")
        else:
            matrix = flat[starts[rows][:, None] + np.arange(k[0])]
            contiguous = rows[-1] - rows[0] + 1 == len(rows)  # rows are increasing
            split_ids = ids.slice(rows[0], len(rows)) if contiguous else ids.take(pa.array(rows))
            out[f][split] = SplitPredictions(split_ids, labels[rows], matrix)
    return out


def _read_table(run_dir: str) -> pa.Table:
    # ParquetFile.read skips the dataset layer of read_table: several times faster on small files
    with pq.ParquetFile(Path(run_dir) / PREDICTIONS_FILE) as f:
        if "probs" not in f.schema_arrow.names and "correct" in f.schema_arrow.names:
            return f.read(columns=GENERATIVE_COLUMNS, use_threads=False)
        table = f.read(columns=COLUMNS, use_threads=False)
    return table if table.schema.equals(SCHEMA) else table.cast(SCHEMA)


def read_splits(
    run_dir: str | Path, splits: Iterable[str] = SPLITS_USED
) -> dict[str, SplitPredictions]:
    """The requested splits of one run's predictions (a split with no rows is left out)."""
    table = _read_table(str(run_dir))
    if _is_generative(table):
        return _generative_splits(table, tuple(splits))
    result = _by_file(table, np.zeros(table.num_rows, dtype=np.int64), 1, tuple(splits))[0]
    if isinstance(result, Exception):
        raise result
    return result


def read_weak_soft(run_dir: str | Path, split: str = "test") -> SplitPredictions | None:
    """The supervisor's probabilities a w2s run recorded in its ``weak_soft`` column on one split
    (with several weak supervisors: their combined labels), or None where they were not
    recorded on every row of that split. Read on demand: only ensemble runs need it."""
    try:
        with pq.ParquetFile(Path(run_dir) / PREDICTIONS_FILE) as f:
            if "weak_soft" not in f.schema_arrow.names:
                return None
            table = f.read(columns=["id", "split", "label", "weak_soft"], use_threads=False)
    except (OSError, pa.ArrowException):
        return None
    table = table.filter(pc.equal(table["split"], split))
    if table.num_rows == 0 or table["weak_soft"].null_count:
        return None
    try:
        table = table.rename_columns(COLUMNS).cast(SCHEMA)
    except (pa.ArrowException, ValueError):
        return None
    result = _by_file(table, np.zeros(table.num_rows, dtype=np.int64), 1, (split,))[0]
    return None if isinstance(result, Exception) else result.get(split)


def _read_or_error(run_dir: str) -> pa.Table | Exception:
    try:
        return _read_table(run_dir)
    except Exception as e:  # noqa: BLE001 - a bad file must not stop the analysis
        return e


def scan_splits(
    run_dirs: Iterable[str], splits: Iterable[str] = SPLITS_USED, chunk: int = CHUNK_FILES
) -> Iterator[tuple[str, Result]]:
    """``(run_dir, splits or the error)`` for many runs.

    Files are read in a small thread pool (pyarrow decodes without the GIL), ``chunk`` at a time,
    and each chunk is converted to numpy in one go: per-file Python and pyarrow calls, not the
    decoding, dominate the cost of small files. An unreadable file only costs itself.
    """
    splits = tuple(splits)
    todo = list(run_dirs)
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for start in range(0, len(todo), chunk):
            dirs = todo[start : start + chunk]
            tables = list(pool.map(_read_or_error, dirs))
            results: list[Result] = list(tables)  # errors stay in place
            for i, t in enumerate(tables):  # generative runs: read on their own
                if not isinstance(t, Exception) and _is_generative(t):
                    try:
                        results[i] = _generative_splits(t, splits)
                    except ValueError as e:
                        results[i] = e
            good = [i for i, t in enumerate(tables)
                    if not isinstance(t, Exception) and not _is_generative(t)]
            if good:
                merged = pa.concat_tables([tables[i] for i in good])
                index = np.repeat(np.arange(len(good)), [tables[i].num_rows for i in good])
                for i, r in zip(good, _by_file(merged, index, len(good), splits), strict=True):
                    results[i] = r
            yield from zip(dirs, results, strict=True)


class PredictionStore:
    """Cache of per-run split predictions by run directory; read errors are kept, not raised."""

    def __init__(self, splits: Iterable[str] = SPLITS_USED) -> None:
        self.splits = tuple(splits)
        self._cache: dict[str, Result] = {}
        self._errors: dict[str, str] = {}

    def _note(self, run_dir: str, result: Result) -> Result:
        if isinstance(result, Exception):
            self._errors[run_dir] = f"{type(result).__name__}: {result}"
        return result

    def prefetch(self, run_dirs: Iterable[str]) -> None:
        """Read and cache every run not cached yet."""
        todo = sorted({d for d in run_dirs if d not in self._cache})
        for run_dir, result in scan_splits(todo, self.splits):
            self._cache[run_dir] = self._note(run_dir, result)

    def stream(self, run_dirs: Iterable[str]) -> Iterator[tuple[str, Result]]:
        """Read runs used once (w2s runs) without caching them, so memory stays flat."""
        run_dirs = list(run_dirs)
        cached = [d for d in run_dirs if d in self._cache]
        yield from ((d, self._cache[d]) for d in cached)
        todo = [d for d in run_dirs if d not in self._cache]
        for run_dir, result in scan_splits(todo, self.splits):
            yield run_dir, self._note(run_dir, result)

    def get(self, run_dir: str, split: str = "test") -> SplitPredictions | None:
        """The split, or None if the file is unreadable or has no such split."""
        if run_dir not in self._cache:
            self._cache[run_dir] = self._note(run_dir, next(scan_splits([run_dir], self.splits))[1])
        result = self._cache[run_dir]
        return None if isinstance(result, Exception) else result.get(split)

    def errors(self) -> dict[str, str]:
        """Unreadable prediction files seen so far, with the error."""
        return dict(self._errors)


def align(*preds: SplitPredictions) -> tuple[SplitPredictions, ...]:
    """Restrict runs to their common examples, in the first run's order; labels must agree."""
    first = preds[0]
    if all(len(p) == len(first) and p.ids.equals(first.ids) for p in preds[1:]):
        aligned = preds
    else:
        common = first.id_strings()
        for p in preds[1:]:
            common = common[np.isin(common, p.id_strings())]
        aligned = []
        for p in preds:
            ids = p.id_strings()
            order = np.argsort(ids, kind="stable")
            aligned.append(p.take(order[np.searchsorted(ids, common, sorter=order)]))
    for p in aligned[1:]:
        if not np.array_equal(p.labels, aligned[0].labels):
            raise ValueError("runs disagree on the gold labels of the same example ids")
    return tuple(aligned)
