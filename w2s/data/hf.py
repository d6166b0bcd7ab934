"""Fetching one split of a Hugging Face dataset as plain files, without the ``datasets`` package.

Datasets on the hub keep their data as parquet shards (``data/train-00000-of-00001.parquet``)
or JSON lines (``harmless-base/train.jsonl.gz``). Older ones hold only a loading script on the
main branch; the hub's own parquet conversion (``refs/convert/parquet``,
``default/train/0000.parquet``) is the fallback for them.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from w2s.data.tasks import DataError

CONVERTED = "refs/convert/parquet"


def split_patterns(split: str) -> list[str]:
    """Glob patterns (hub style: ``*`` crosses folders) of a split's data files."""
    return [
        f"{split}-*.parquet",
        f"*/{split}-*.parquet",
        f"{split}/*.parquet",
        f"*/{split}/*.parquet",
        f"{split}.jsonl",
        f"{split}.jsonl.gz",
        f"*/{split}.jsonl",
        f"*/{split}.jsonl.gz",
    ]


def _matching(root: Path, patterns: list[str]) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts]
    rel = {p: p.relative_to(root).as_posix() for p in files}
    return sorted(p for p in files if any(fnmatch.fnmatch(rel[p], pat) for pat in patterns))


def download_split(repo_id: str, split: str, cache_dir: Path) -> list[Path]:
    """Local paths of the data files of ``split`` in dataset ``repo_id``, in a stable order."""
    from huggingface_hub import snapshot_download

    patterns = split_patterns(split)
    hint = "to work offline, set task.path to a local .parquet, .jsonl or .csv file of that split"
    files: list[Path] = []
    try:
        for revision in (None, CONVERTED):
            root = snapshot_download(
                repo_id,
                repo_type="dataset",
                revision=revision,
                allow_patterns=patterns,
                cache_dir=str(cache_dir / "hf"),
            )
            files = _matching(Path(root), patterns)
            if files:
                break
    except Exception as err:  # offline, unknown repo, gated repo, hub outage ...
        raise DataError(
            f"could not download split {split!r} of HF dataset {repo_id} "
            f"({type(err).__name__}: {err}); {hint}"
        ) from err
    if not files:
        raise DataError(
            f"HF dataset {repo_id} has no parquet or jsonl files for split {split!r} "
            f"(looked on the main branch and {CONVERTED}); check task.hf_split, or {hint}"
        )
    return files
