"""Reading tabular data files (parquet, jsonl, csv) with errors that name the file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from w2s.data.tasks import DataError

SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".csv")


def table_suffix(path: Path) -> str | None:
    """The supported suffix ``path`` ends with, or None."""
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


def read_table(path: str | Path, csv_dtype=None) -> pd.DataFrame:
    """Read one data file into a DataFrame; the format comes from the extension.
    ``csv_dtype=str`` keeps a CSV's cells as written (``5`` stays the string ``"5"``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    suffix = table_suffix(path)
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".jsonl.gz"):
            if path.stat().st_size == 0:
                return pd.DataFrame()
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".csv":
            return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=csv_dtype)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except ValueError as err:  # malformed JSON and the like
        raise DataError(f"{path}: cannot be read as {suffix}: {err}") from err
    raise DataError(
        f"{path}: unknown extension {''.join(path.suffixes) or '(none)'!r}; "
        f"use one of {', '.join(SUFFIXES)}"
    )


def read_tables(paths: Sequence[Path]) -> pd.DataFrame:
    """Read several files of one schema (e.g. parquet shards) and stack them in order."""
    frames = [read_table(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def require_columns(df: pd.DataFrame, columns: Iterable[str], where: str | Path) -> None:
    """Fail naming the first missing column and listing the columns present."""
    for col in columns:
        if col not in df.columns:
            present = ", ".join(map(str, df.columns)) or "none"
            raise DataError(f"{where}: missing column {col!r} (columns present: {present})")
