"""Content-addressed run directories: ``<results>/runs/<kind>/<run_id>/``.

A run's id is a hash of what determines its numbers (never of cosmetic keys such as progress
bars or the results path), so the same run asked for twice is found, not recomputed. Every
file is written to a temporary name and renamed; ``metrics.json`` is written last, so a run
with ``status: done`` always has its predictions beside it. A failed run records
``status: failed`` and its error. Jobs running at once (a parallel sweep) take a run's lock
around checking, training and recording it (``RunStore.claim``): the first trains it, the others
wait, then find it finished and reuse it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

KINDS = ("weak", "ceiling", "w2s")
log = logging.getLogger("w2s")


def run_id(identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(path: Path, frame) -> None:
    """A DataFrame to ``path``, all or nothing (a temp file renamed into place)."""
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_json(path: Path, obj: Any) -> None:
    def w(tmp):
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=True, default=_jsonable))

    _atomic_write(path, w)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class RunStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def dir(self, kind: str, rid: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"run kind '{kind}' unknown; use one of {KINDS}")
        return self.root / "runs" / kind / rid

    @contextmanager
    def claim(self, *runs: tuple[str, str]) -> Iterator[None]:
        """Hold the lock (``flock`` on ``<run dir>/.lock``) of each ``(kind, run_id)`` here.

        Check, train and record runs inside it: another process that needs one of them waits
        here, then finds it finished. Locks are taken in sorted order, so processes claiming
        overlapping groups cannot deadlock. The kernel drops a lock when its holder exits or is
        killed; the empty ``.lock`` file stays. Not re-entrant: do not nest claims of a run.
        """
        with ExitStack() as held:
            for kind, rid in sorted(set(runs)):
                d = self.dir(kind, rid)
                d.mkdir(parents=True, exist_ok=True)
                f = held.enter_context(open(d / ".lock", "a"))
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.info("%s run %s is being trained by another job: waiting", kind, rid)
                    fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def finished(self, kind: str, rid: str) -> dict | None:
        """The metrics of a finished run, or None."""
        m = read_json(self.dir(kind, rid) / "metrics.json")
        if m and m.get("status") == "done" and (self.dir(kind, rid) / "predictions.parquet").is_file():
            return m
        return None

    def start(self, kind: str, rid: str, config: dict, header: dict) -> Path:
        """Create the run dir with its resolved config; mark it running (not a result yet)."""
        d = self.dir(kind, rid)
        d.mkdir(parents=True, exist_ok=True)
        for stale in ("predictions.parquet",):
            (d / stale).unlink(missing_ok=True)

        def w(tmp):
            Path(tmp).write_text(yaml.safe_dump(config, sort_keys=False))

        _atomic_write(d / "config.yaml", w)
        write_json(d / "metrics.json", {**header, "status": "running"})
        return d

    def finish(self, d: Path, metrics: dict, predictions: pd.DataFrame) -> None:
        write_parquet(d / "predictions.parquet", predictions)
        write_json(d / "metrics.json", {**metrics, "status": "done"})

    def fail(self, d: Path, header: dict, error: BaseException) -> None:
        (d / "predictions.parquet").unlink(missing_ok=True)
        write_json(
            d / "metrics.json",
            {
                **header,
                "status": "failed",
                "error": f"{type(error).__name__}: {error}",
                "traceback": "".join(traceback.format_exception(error))[-4000:],
            },
        )

    def clear_checkpoints(self, kind: str, rid: str) -> None:
        """Remove a run's training checkpoints (a finished run needs none; Adam state of a 7B
        model is tens of GB)."""
        shutil.rmtree(self.dir(kind, rid) / "checkpoints", ignore_errors=True)

    def clear_weights(self, kind: str, rid: str) -> None:
        """Remove checkpoints and kept weights: a forced rerun starts from the pretrained model."""
        self.clear_checkpoints(kind, rid)
        shutil.rmtree(self.dir(kind, rid) / "weights", ignore_errors=True)

    def predictions(self, kind: str, rid: str) -> pd.DataFrame:
        return pd.read_parquet(self.dir(kind, rid) / "predictions.parquet")
