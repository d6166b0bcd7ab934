"""Load the run store: one row per finished run, and a report of every run that was skipped.

The pipeline writes runs concurrently and may be killed at any time, so a results directory can
hold failed, running and half-written runs. They are never fatal here: each is skipped with a
reason, and the reason is written to ``skipped.md`` so that nothing disappears silently.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

KINDS = ("weak", "ceiling", "w2s")
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
TRACKING_DIR = "tracking"  # w2s's default log.dir below a results directory
# Files whose presence marks a directory as a run directory even without metrics.json.
RUN_MARKERS = (METRICS_FILE, PREDICTIONS_FILE, "config.yaml")

# Columns of the runs frame, in order; config.* columns follow.
RUN_COLUMNS = (
    "run_id",
    "kind",
    "task",
    "weak_model",
    "strong_model",
    "loss",
    "seed",
    "accuracy",
    "auroc",
    "nll",  # generative runs: mean reference-token NLL on test
    "n_test",
    "train_seconds",
    "examples_per_second",
    "n_params",
    "weak_params",
    "strong_params",
    "weak_run",
    # provenance and supervision fields (absent from runs written before they were recorded)
    "weak_runs",
    "ceiling_run",
    "previous_run",
    "supervisor_accuracy",
    "supervisor_members",
    "code_version",
    "git_commit",
    "git_dirty",
    "models",
    "backbone_change",
    "predict_seconds_per_example",
    "eval_curve",
    "selected_step",
    "n_duplicates_dropped",
    "flags",
    "rows",
    "steps",
    "max_steps",
    "stopped_at",
    "status",
    "run_dir",
)
_NUMERIC_OPTIONAL = (
    "auroc",
    "nll",
    "n_test",
    "train_seconds",
    "examples_per_second",
    "n_params",
    "weak_params",
    "strong_params",
    "supervisor_accuracy",
    "backbone_change",
    "predict_seconds_per_example",
    "selected_step",
    "n_duplicates_dropped",
    "steps",
    "max_steps",
    "stopped_at",
)
_STRING_OPTIONAL = (
    "weak_run", "ceiling_run", "previous_run", "code_version", "git_commit", "rows"
)
# Lists and dicts are kept as canonical JSON text: hashable (pandas can group and deduplicate
# on them) and readable in the CSV outputs. `json_field` parses them back.
_JSON_OPTIONAL = ("weak_runs", "supervisor_members", "models", "eval_curve", "flags")
# Fields whose absence marks a run written before provenance was recorded.
PROVENANCE_FIELDS = ("code_version", "git_commit")
RECORDED_PARTNER_FIELDS = ("weak_runs", "ceiling_run")
# Model fields a run of each kind must name.
_MODEL_FIELDS = {
    "weak": ("weak_model",),
    "ceiling": ("strong_model",),
    "w2s": ("weak_model", "strong_model"),
}


@dataclass(frozen=True)
class SkippedRun:
    """A run directory left out of the analysis, and why."""

    path: str
    reason: str
    run_id: str | None = None
    kind: str | None = None


@dataclass
class LoadReport:
    """What `load_runs` saw: counts and the skipped runs with reasons."""

    results_dir: str
    n_found: int = 0
    n_loaded: int = 0
    skipped: list[SkippedRun] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def skip(self, path: str | Path, reason: str, meta: dict | None = None) -> None:
        meta = meta or {}
        run_id = meta.get("run_id") if isinstance(meta.get("run_id"), str) else None
        kind = meta.get("kind") if isinstance(meta.get("kind"), str) else None
        self.skipped.append(SkippedRun(str(path), reason, run_id, kind))

    def to_markdown(self) -> str:
        """The skipped-runs report, relative paths, sorted so that diffs between runs are small."""
        root = Path(self.results_dir)
        lines = [
            "# Skipped runs",
            "",
            f"Results directory: `{self.results_dir}`",
            "",
            f"Run directories found: {self.n_found}; loaded: {self.n_loaded}; "
            f"skipped: {len(self.skipped)}.",
            "",
        ]
        if self.skipped:
            lines += ["| run directory | run_id | kind | reason |", "|---|---|---|---|"]
            for s in sorted(self.skipped, key=lambda s: s.path):
                rel = os.path.relpath(s.path, root)
                reason = s.reason.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| `{rel}` | {s.run_id or ''} | {s.kind or ''} | {reason} |")
            lines.append("")
        if self.warnings:
            lines += ["## Warnings", ""] + [f"- {w}" for w in self.warnings] + [""]
        return "\n".join(lines)


def _find_run_dirs(root: Path) -> list[tuple[Path, set[str]]]:
    """Directories that hold a run marker, or are empty leaves under a ``<kind>/`` folder."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # hidden folders (Hydra's .hydra/ job logs, temp dirs) never hold runs
        # and the experiment trackers' files (log.dir, default <results>/tracking) are no runs
        dirnames[:] = [
            d for d in dirnames
            if not d.startswith(".") and not (d == TRACKING_DIR and Path(dirpath) == root)
        ]
        names = set(filenames)
        is_leaf_of_kind = not dirnames and Path(dirpath).parent.name in KINDS
        if names.intersection(RUN_MARKERS) or is_leaf_of_kind:
            found.append((Path(dirpath), names))
            dirnames[:] = []  # a run directory does not contain other runs
    return found


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _validate(meta: object, has_predictions: bool) -> str | None:
    """Reason to skip a run, or None when it is a finished run usable for the analysis."""
    if not isinstance(meta, dict):
        return "metrics.json is not a JSON object"
    status = meta.get("status")
    if status != "done":
        if status == "failed":
            err = str(meta.get("error") or "no error message")
            return f"status failed: {err[:200]}"
        return f"status {status!r} (not done)" if status is not None else "missing field: status"
    for name in ("run_id", "kind", "task"):
        if not isinstance(meta.get(name), str) or not meta.get(name):
            return f"missing field: {name}"
    kind = meta["kind"]
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    for name in _MODEL_FIELDS[kind] + (("loss",) if kind == "w2s" else ()):
        if not isinstance(meta.get(name), str) or not meta.get(name):
            return f"missing field: {name} (required for kind {kind})"
    seed = meta.get("seed")
    if not _is_number(seed) or int(seed) != seed:
        return "missing field: seed (an integer)"
    acc = meta.get("accuracy")
    if not _is_number(acc) or not 0.0 <= acc <= 1.0:
        return "missing field: accuracy (a number in [0, 1])"
    if not has_predictions:
        return "missing predictions.parquet (half-written)"
    return None


def _config_value(value: object) -> object:
    """Config values are scalars by contract; anything else becomes its JSON text (hashable)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True)


def _row(meta: dict, run_dir: Path) -> dict:
    row = {name: meta.get(name) for name in RUN_COLUMNS}
    for name in _NUMERIC_OPTIONAL:
        if not _is_number(row[name]):
            row[name] = math.nan
    row["seed"] = int(meta["seed"])
    row["accuracy"] = float(meta["accuracy"])
    if not isinstance(row["loss"], str) or not row["loss"]:
        row["loss"] = "gt"  # weak and ceiling runs train on ground truth
    for name in _STRING_OPTIONAL:
        if not isinstance(row[name], str) or not row[name]:
            row[name] = None
    for name in _JSON_OPTIONAL:
        row[name] = None if row[name] is None else json.dumps(row[name], sort_keys=True)
    if not isinstance(row["git_dirty"], bool):
        row["git_dirty"] = None
    row["run_dir"] = str(run_dir)
    config = meta.get("config")
    if isinstance(config, dict):
        for key, value in config.items():
            row[f"config.{key}"] = _config_value(value)
    return row


def load_runs(results_dir: str | Path) -> tuple[pd.DataFrame, LoadReport]:
    """Every finished run below ``results_dir`` as a DataFrame, and the report of skipped runs.

    Columns: the metrics fields (``RUN_COLUMNS``) and one ``config.<dotted key>`` column per
    config key seen. A run is kept only when its metrics say ``status: done``, carry the fields the
    analysis needs, and its predictions file exists; every other run directory is listed in the
    report with a reason. Duplicate ``run_id`` s keep the first directory in sorted order.
    """
    root = Path(results_dir)
    report = LoadReport(str(root))
    if not root.is_dir():
        raise FileNotFoundError(f"results directory not found: {root}")
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for run_dir, names in sorted(_find_run_dirs(root)):
        report.n_found += 1
        if METRICS_FILE not in names:
            report.skip(run_dir, "no metrics.json (half-written or still starting)")
            continue
        try:
            with open(run_dir / METRICS_FILE, "rb") as f:
                meta = json.loads(f.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            report.skip(run_dir, f"invalid metrics.json (truncated?): {e}")
            continue
        except OSError as e:
            report.skip(run_dir, f"unreadable metrics.json: {e}")
            continue
        reason = _validate(meta, PREDICTIONS_FILE in names)
        if reason is not None:
            report.skip(run_dir, reason, meta if isinstance(meta, dict) else None)
            continue
        if meta["run_id"] in seen:
            report.skip(run_dir, f"duplicate run_id (kept {seen[meta['run_id']]})", meta)
            continue
        seen[meta["run_id"]] = str(run_dir)
        rows.append(_row(meta, run_dir))
    report.n_loaded = len(rows)
    report.warnings += _old_run_notes(rows)
    runs = pd.DataFrame(rows)
    if runs.empty:
        runs = pd.DataFrame(columns=list(RUN_COLUMNS))
    config_cols = sorted(c for c in runs.columns if c.startswith("config."))
    return runs[list(RUN_COLUMNS) + config_cols], report


def _old_run_notes(rows: list[dict]) -> list[str]:
    """Say how many runs predate the provenance and partner-id fields: they still load, and the
    analysis falls back (code "unknown", pairing by task/model/seed, costs from parameters)."""
    notes = []
    old = sum(all(r[f] is None for f in PROVENANCE_FIELDS) for r in rows)
    if old:
        notes.append(
            f"{old} of {len(rows)} runs record no code_version/git_commit (written before "
            "provenance was recorded): their code shows as unknown"
        )
    w2s = [r for r in rows if r["kind"] == "w2s"]
    unrecorded = sum(any(r[f] is None for f in RECORDED_PARTNER_FIELDS) for r in w2s)
    if unrecorded:
        notes.append(
            f"{unrecorded} of {len(w2s)} w2s runs lack weak_runs or ceiling_run: those partners "
            "are matched by (task, model, seed) instead of by id (see note in pgr_runs.csv)"
        )
    no_time = sum(not _is_number(r["predict_seconds_per_example"]) for r in rows)
    if no_time:
        notes.append(
            f"{no_time} of {len(rows)} runs lack predict_seconds_per_example: cascade costs fall "
            "back to parameter counts unless every cascade pair has measured times"
        )
    return notes


def json_field(value: object) -> object:
    """A list/dict field of the runs frame (stored as JSON text) as a Python object, or None."""
    if isinstance(value, str):
        return json.loads(value)
    return None


def load_predictions(run_dir: str | Path) -> pd.DataFrame:
    """A run's predictions.parquet as a DataFrame (``probs`` holds one array per row)."""
    return pq.read_table(Path(run_dir) / PREDICTIONS_FILE).to_pandas()


def resolve_group_keys(runs: pd.DataFrame, keys: list[str] | None) -> list[str]:
    """Map user keys (``train.lr`` or ``config.train.lr`` or a metrics field) to columns."""
    out = []
    for key in keys or []:
        if key in runs.columns:
            out.append(key)
        elif f"config.{key}" in runs.columns:
            out.append(f"config.{key}")
        else:
            known = ", ".join(
                c.removeprefix("config.") for c in runs.columns if c.startswith("config.")
            )
            raise KeyError(f"unknown group-by key {key!r}; config keys seen: {known or 'none'}")
    return out
