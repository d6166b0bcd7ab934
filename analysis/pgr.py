"""Performance gap recovered (PGR): pairing w2s runs with their weak and ceiling runs, and
aggregating over seeds.

PGR = (acc_w2s − acc_weak) / (acc_ceiling − acc_weak) (Burns et al. 2023), also from AUROC.
Gap policy: when the ceiling does not beat the weak model by more than ``eps`` the ratio is
meaningless (it explodes or flips sign), so PGR is NaN, the row keeps ``gap_ok=False``, and the
aggregate counts it in ``n_flagged`` instead of dropping it silently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.predictions import PredictionStore, align
from analysis.stats import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    grouped_mean_ci,
    joint_pattern_counts,
    pgr_example_bootstrap,
)

PAIR_KEYS = ("task", "weak_model", "strong_model", "loss")
AGGREGATION_NOTE = (
    "PGR = (acc_w2s − acc_weak)/(acc_ceiling − acc_weak) per seed; shown: mean over seeds with a "
    "95% percentile-bootstrap CI ({n_resamples} resamples over seeds; with one seed, over test "
    "examples resampled jointly for weak, ceiling and w2s), and the median over seeds. Seeds whose "
    "ceiling does not beat the weak model by more than eps={eps:g} have undefined PGR: they are "
    "flagged and counted, and left out of the PGR aggregates (not out of the accuracies)."
)


def pgr(acc_w2s, acc_weak, acc_ceiling, eps: float = 0.0):
    """PGR, NaN where the ceiling–weak gap is ≤ ``eps``. Works on scalars and arrays."""
    acc_w2s, acc_weak, acc_ceiling = (
        np.asarray(x, dtype=float) for x in (acc_w2s, acc_weak, acc_ceiling)
    )
    gap = acc_ceiling - acc_weak
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap > eps, (acc_w2s - acc_weak) / gap, np.nan)
    return float(out) if out.ndim == 0 else out


def agreement(weak_probs: np.ndarray, w2s_probs: np.ndarray) -> float:
    """Share of examples on which the w2s model's argmax equals the weak model's argmax."""
    if len(weak_probs) == 0:
        return float("nan")
    return float(np.mean(weak_probs.argmax(axis=1) == w2s_probs.argmax(axis=1)))


def _pick(candidates: list[dict], w2s: dict, group_keys: list[str]) -> tuple[dict | None, int]:
    """Prefer a partner that agrees with the w2s run on the user's group keys, then the first id."""
    if not candidates:
        return None, 0
    if len(candidates) > 1 and group_keys:
        same = [c for c in candidates if all(c.get(k) == w2s.get(k) for k in group_keys)]
        candidates = same or candidates
    return min(candidates, key=lambda c: c["run_id"]), len(candidates)


def pair_runs(
    runs: pd.DataFrame, group_keys: list[str] | None = None, eps: float = 0.0
) -> pd.DataFrame:
    """One row per finished w2s run with its weak and ceiling partners and per-seed PGR.

    Weak partner: the run named by ``weak_run`` when it was loaded, else the weak run with the
    same (task, weak_model, seed). Ceiling partner: same (task, strong_model, seed). Ambiguous
    matches prefer equal group-key values, then the smallest run_id, and are noted in ``note``.
    Unpaired w2s runs are kept with NaN PGR and ``paired=False``.
    """
    group_keys = list(group_keys or [])
    records = runs.to_dict("records")
    by_id = {r["run_id"]: r for r in records}
    weak_by_key: dict[tuple, list[dict]] = {}
    ceiling_by_key: dict[tuple, list[dict]] = {}
    for r in records:
        if r["kind"] == "weak":
            weak_by_key.setdefault((r["task"], r["weak_model"], r["seed"]), []).append(r)
        elif r["kind"] == "ceiling":
            ceiling_by_key.setdefault((r["task"], r["strong_model"], r["seed"]), []).append(r)
    rows = []
    for w in (r for r in records if r["kind"] == "w2s"):
        notes = []
        weak = by_id.get(w["weak_run"]) if w["weak_run"] else None
        if weak is not None and weak["kind"] != "weak":
            weak = None
        if weak is None:
            if w["weak_run"]:
                notes.append(f"weak_run {w['weak_run']} not loaded; matched by key")
            weak, n = _pick(
                weak_by_key.get((w["task"], w["weak_model"], w["seed"]), []), w, group_keys
            )
            if n > 1:
                notes.append(f"{n} weak candidates")
        ceiling, n = _pick(
            ceiling_by_key.get((w["task"], w["strong_model"], w["seed"]), []), w, group_keys
        )
        if n > 1:
            notes.append(f"{n} ceiling candidates")
        if weak is None:
            notes.append("no weak run")
        if ceiling is None:
            notes.append("no ceiling run")
        row = {k: w[k] for k in PAIR_KEYS}
        row.update({k: w.get(k) for k in group_keys})
        row.update(
            seed=w["seed"],
            w2s_run=w["run_id"],
            weak_run=weak["run_id"] if weak else None,
            ceiling_run=ceiling["run_id"] if ceiling else None,
            w2s_dir=w["run_dir"],
            weak_dir=weak["run_dir"] if weak else None,
            ceiling_dir=ceiling["run_dir"] if ceiling else None,
            weak_params=_first_number(w["weak_params"], weak and weak["n_params"]),
            strong_params=_first_number(
                w["strong_params"], ceiling and ceiling["n_params"], w["n_params"]
            ),
            acc_weak=weak["accuracy"] if weak else np.nan,
            acc_ceiling=ceiling["accuracy"] if ceiling else np.nan,
            acc_w2s=w["accuracy"],
            auroc_weak=weak["auroc"] if weak else np.nan,
            auroc_ceiling=ceiling["auroc"] if ceiling else np.nan,
            auroc_w2s=w["auroc"],
            note="; ".join(notes),
        )
        rows.append(row)
    columns = [*PAIR_KEYS, *group_keys, "seed", "w2s_run", "weak_run", "ceiling_run"]
    pairs = pd.DataFrame(rows, columns=None if rows else columns)
    if pairs.empty:
        return pairs
    pairs["paired"] = pairs["weak_run"].notna() & pairs["ceiling_run"].notna()
    pairs["gap"] = pairs["acc_ceiling"] - pairs["acc_weak"]
    pairs["gap_ok"] = pairs["paired"] & (pairs["gap"] > eps)
    pairs["pgr"] = pgr(pairs["acc_w2s"], pairs["acc_weak"], pairs["acc_ceiling"], eps)
    pairs["gap_auroc_ok"] = (pairs["auroc_ceiling"] - pairs["auroc_weak"]) > eps
    pairs["pgr_auroc"] = pgr(pairs["auroc_w2s"], pairs["auroc_weak"], pairs["auroc_ceiling"], eps)
    pairs["agreement"] = np.nan
    pairs["pattern_counts"] = None
    return pairs.sort_values([*PAIR_KEYS, *group_keys, "seed", "w2s_run"], ignore_index=True)


def _first_number(*values) -> float:
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            return float(v)
    return np.nan


def _pair_prediction_metrics(
    store: PredictionStore, row, w2s_result
) -> tuple[float, np.ndarray | None, str]:
    """Agreement and joint correctness counts of one w2s run, or a warning."""
    if isinstance(w2s_result, Exception):
        return np.nan, None, ""  # the store lists unreadable files
    weak, ceiling, w2s = store.get(row.weak_dir), store.get(row.ceiling_dir), w2s_result.get("test")
    if weak is None or ceiling is None or w2s is None:
        return np.nan, None, f"w2s run {row.w2s_run}: test predictions missing for it or a partner"
    try:
        weak, ceiling, w2s = align(weak, ceiling, w2s)
    except ValueError as e:
        return np.nan, None, f"w2s run {row.w2s_run}: {e}"
    counts = joint_pattern_counts(weak.correct, ceiling.correct, w2s.correct)
    return agreement(weak.probs, w2s.probs), counts, ""


def add_prediction_metrics(pairs: pd.DataFrame, store: PredictionStore) -> list[str]:
    """Fill ``agreement`` and the joint correctness counts from test predictions, in place.

    Weak and ceiling predictions are cached (many w2s runs share them); w2s predictions are
    streamed and dropped, so memory stays flat however many runs there are. Returns warnings for
    pairs whose predictions could not be read or aligned.
    """
    if pairs.empty:
        return []
    paired = pairs[pairs["paired"]]
    store.prefetch(list(paired["weak_dir"]) + list(paired["ceiling_dir"]))
    rows_by_dir: dict[str, list] = {}
    for row in paired[["w2s_run", "w2s_dir", "weak_dir", "ceiling_dir"]].itertuples():
        rows_by_dir.setdefault(row.w2s_dir, []).append(row)
    agree = pairs["agreement"].to_numpy(dtype=float, copy=True)
    counts = list(pairs["pattern_counts"])
    warnings = []
    for w2s_dir, result in store.stream(rows_by_dir):
        for row in rows_by_dir[w2s_dir]:
            a, c, warning = _pair_prediction_metrics(store, row, result)
            pos = pairs.index.get_loc(row.Index)
            agree[pos], counts[pos] = a, c
            if warning:
                warnings.append(warning)
    pairs["agreement"] = agree
    pairs["pattern_counts"] = counts
    return warnings


def aggregate_pgr(
    pairs: pd.DataFrame,
    group_keys: list[str] | None = None,
    eps: float = 0.0,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """Per (task, weak, strong, loss, *group_keys): accuracies, PGR mean/median/CI over seeds.

    ``n_seeds`` counts paired runs with a defined PGR; ``n_flagged`` those whose ceiling did not
    beat the weak model; ``n_unpaired`` those missing a partner. ``ci_method`` says what was
    resampled: "seeds", "examples" (single seed with predictions) or "none".
    """
    keys = [*PAIR_KEYS, *(group_keys or [])]
    if pairs.empty:
        return pd.DataFrame(columns=keys)
    pairs = pairs.assign(_flagged=pairs["paired"] & ~pairs["gap_ok"])
    grouped = pairs.groupby(keys, dropna=False, sort=True)
    summary = grouped.agg(
        weak_params=("weak_params", "median"),
        strong_params=("strong_params", "median"),
        n_runs=("w2s_run", "size"),
        n_paired=("paired", "sum"),
        n_seeds=("pgr", "count"),
        acc_weak=("acc_weak", "mean"),
        acc_ceiling=("acc_ceiling", "mean"),
        acc_w2s=("acc_w2s", "mean"),
        pgr_mean=("pgr", "mean"),
        pgr_median=("pgr", "median"),
        pgr_auroc_mean=("pgr_auroc", "mean"),
        pgr_auroc_median=("pgr_auroc", "median"),
        agreement=("agreement", "mean"),
        n_flagged=("_flagged", "sum"),
    ).reset_index()
    summary["n_unpaired"] = summary["n_runs"] - summary["n_paired"]
    summary["gap_ok"] = summary["n_flagged"] == 0
    samples = [g["pgr"].to_numpy(dtype=float) for _, g in grouped]
    ci = grouped_mean_ci(samples, n_resamples=n_resamples, seed=seed)
    summary["pgr_ci_low"], summary["pgr_ci_high"] = ci[:, 0], ci[:, 1]
    method = np.where(summary["n_seeds"] >= 2, "seeds", "none").astype(object)
    for pos, (_, g) in enumerate(grouped):
        if summary.at[pos, "n_seeds"] != 1:
            continue
        row = g[g["pgr"].notna()].iloc[0]
        if row["pattern_counts"] is None:
            summary.loc[pos, ["pgr_ci_low", "pgr_ci_high"]] = np.nan
            continue
        lo, hi, _ = pgr_example_bootstrap(row["pattern_counts"], eps, n_resamples, seed=seed)
        summary.loc[pos, ["pgr_ci_low", "pgr_ci_high"]] = lo, hi
        method[pos] = "examples"
    summary["ci_method"] = method
    return summary
