"""Cascade and calibration metrics for every (weak, strong) pair of a results directory.

A cascade unit is one weak run and one ceiling run (the strong model trained on ground truth)
with the same task and seed, taken from the w2s pairings, so only pairs that were run as an
experiment appear (for a w2s run with several supervisors, its first weak run, under that run's
own model name). Per-seed metrics are averaged per (task, weak_model, strong_model).

Costs per example are the measured inference times (``predict_seconds_per_example``) of the weak
and the ceiling run when every unit has both, else parameter counts; ``--cost-weak`` and
``--cost-strong`` override either side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from analysis.calibration import aurc, ece, reliability_bins
from analysis.cascade import (
    PGR_LEVELS,
    BudgetChoice,
    apgr,
    apply_threshold,
    audc,
    cascade_cost,
    cpt,
    monotonicity,
    normalised_audc,
    scored_deferral_curve,
    threshold_for_budget,
)
from analysis.predictions import PredictionStore, SplitPredictions, align

CURVE_GRID = np.linspace(0.0, 1.0, 101)
UNIT_KEYS = ("task", "weak_model", "strong_model")


@dataclass(frozen=True)
class Budget:
    """A cost budget per example: absolute, or c_weak + share·c_strong of each pair."""

    label: str
    absolute: float | None = None
    strong_share: float | None = None

    def value(self, c_weak: float, c_strong: float) -> float:
        if self.absolute is not None:
            return self.absolute
        return float(cascade_cost(self.strong_share, c_weak, c_strong))


def budgets_from_args(shares: list[float] | None, absolute: list[float] | None) -> list[Budget]:
    out = [Budget(f"c_weak + {s:g}·c_strong", strong_share=s) for s in shares or []]
    out += [Budget(f"{b:g} per example", absolute=b) for b in absolute or []]
    return out


@dataclass
class CascadeResults:
    """Per-seed units, per-pair means, mean deferral curves and weak-model calibration."""

    units: pd.DataFrame
    table: pd.DataFrame
    budgets: pd.DataFrame
    curves: pd.DataFrame
    calibration: pd.DataFrame
    reliability: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


MEASURED = "seconds per example (measured)"
PARAMS = "parameters"
GIVEN = "given (--cost-weak/--cost-strong)"


def cost_unit(units_in: pd.DataFrame, cost_weak: float | None, cost_strong: float | None) -> str:
    """One unit for every pair, so that costs and absolute budgets compare across the table:
    measured seconds when every pair has both times, else parameter counts."""
    if cost_weak is not None and cost_strong is not None:
        return GIVEN
    times = units_in[["weak_seconds", "ceiling_seconds"]].to_numpy(dtype=float)
    base = MEASURED if len(times) and np.isfinite(times).all() else PARAMS
    given = [
        n for n, c in (("cost_weak", cost_weak), ("cost_strong", cost_strong)) if c is not None
    ]
    return base + (f", {given[0]} given" if given else "")


def _costs(
    row: pd.Series, cost_weak: float | None, cost_strong: float | None, unit: str
) -> tuple[float, float]:
    measured = unit.startswith(MEASURED)
    default_weak = row["weak_seconds"] if measured else row["weak_params"]
    default_strong = row["ceiling_seconds"] if measured else row["strong_params"]
    c_weak = cost_weak if cost_weak is not None else default_weak
    c_strong = cost_strong if cost_strong is not None else default_strong
    return float(c_weak), float(c_strong)


def _unit_metrics(
    weak: SplitPredictions,
    strong: SplitPredictions,
    weak_val: SplitPredictions | None,
    strong_val: SplitPredictions | None,
    c_weak: float,
    c_strong: float,
    budgets: list[Budget],
    eps: float,
    seconds: tuple[float, float] = (np.nan, np.nan),
) -> tuple[dict, list[dict], dict]:
    """One cascade unit: curve metrics on test, budget thresholds (val → test), curves on a grid.

    ``seconds``: measured (weak, strong) inference seconds per example, reported next to the
    costs whatever unit the costs use (NaN when not measured).
    """
    curve = scored_deferral_curve(weak.confidence, weak.correct, strong.correct)
    shares = cpt(curve, PGR_LEVELS, eps)
    mono = monotonicity(curve)
    s_weak, s_strong = (float(x) for x in seconds)
    metrics = {
        "n_test": len(weak),
        "acc_weak": curve.acc_weak,
        "acc_strong": curve.acc_strong,
        "audc": audc(curve.share, curve.accuracy),
        "audc_random": audc(curve.share, curve.random),
        "audc_oracle": audc(curve.share, curve.oracle),
        "audc_norm": normalised_audc(curve),
        "apgr": apgr(curve, eps),
        "monotone": mono.monotone,
        "nonmonotone_share": mono.nonmonotone_share,
        "n_drops": mono.n_drops,
        "cost_weak": c_weak,
        "cost_strong": c_strong,
        "seconds_weak": s_weak,
        "seconds_strong": s_strong,
    }
    for lv, share in shares.items():
        metrics[f"cpt{round(lv * 100)}"] = share
        metrics[f"cost_cpt{round(lv * 100)}"] = float(cascade_cost(share, c_weak, c_strong))
        metrics[f"seconds_cpt{round(lv * 100)}"] = float(cascade_cost(share, s_weak, s_strong))
    choices = []
    for b in budgets:
        budget = b.value(c_weak, c_strong)
        if weak_val is None or strong_val is None or not np.isfinite(budget):
            skipped = asdict(BudgetChoice(budget, *[np.nan] * 3))
            choices.append({"budget_label": b.label, **skipped, "test_seconds": np.nan})
            continue
        choice = threshold_for_budget(
            weak_val.confidence, weak_val.correct, strong_val.correct, budget, c_weak, c_strong
        )
        choice = apply_threshold(
            choice, weak.confidence, weak.correct, strong.correct, c_weak, c_strong
        )
        seconds_at = float(cascade_cost(choice.test_share, s_weak, s_strong))
        choices.append({"budget_label": b.label, **asdict(choice), "test_seconds": seconds_at})
    grid = {
        "cascade": np.interp(CURVE_GRID, curve.share, curve.accuracy),
        "random": np.interp(CURVE_GRID, curve.share, curve.random),
        "oracle": np.interp(CURVE_GRID, curve.share, curve.oracle),
    }
    return metrics, choices, grid


def run_cascades(
    pairs: pd.DataFrame,
    store: PredictionStore,
    cost_weak: float | None = None,
    cost_strong: float | None = None,
    budgets: list[Budget] | None = None,
    eps: float = 0.0,
    n_bins: int = 15,
) -> CascadeResults:
    """Cascade metrics per (weak run, ceiling run), averaged per (task, weak, strong)."""
    budgets = budgets if budgets is not None else budgets_from_args([0.5], [])
    warnings: list[str] = []
    cols = [
        *UNIT_KEYS,
        "seed",
        "weak_run",
        "ceiling_run",
        "weak_dir",
        "ceiling_dir",
        "weak_params",
        "strong_params",
        "weak_seconds",
        "ceiling_seconds",
    ]
    if pairs.empty:
        units_in = pd.DataFrame(columns=cols)
    else:
        units_in = pairs.loc[pairs["paired"]].copy()
        for c in ("weak_seconds", "ceiling_seconds"):
            if c not in units_in:
                units_in[c] = np.nan
        if "weak_run_model" in units_in:  # an ensemble's row names all supervisors
            units_in["weak_model"] = units_in["weak_run_model"].fillna(units_in["weak_model"])
        units_in = units_in[cols].drop_duplicates(["weak_run", "ceiling_run"])
    unit = cost_unit(units_in, cost_weak, cost_strong)
    store.prefetch(list(units_in["weak_dir"]) + list(units_in["ceiling_dir"]))
    unit_rows, budget_rows, curve_rows = [], [], []
    for _, u in units_in.iterrows():
        weak_test, strong_test = store.get(u["weak_dir"]), store.get(u["ceiling_dir"])
        if weak_test is None or strong_test is None:
            warnings.append(
                f"cascade {u['weak_run']}→{u['ceiling_run']}: test predictions unavailable"
            )
            continue
        weak_val, strong_val = store.get(u["weak_dir"], "val"), store.get(u["ceiling_dir"], "val")
        try:
            weak_test, strong_test = align(weak_test, strong_test)
            if weak_val is not None and strong_val is not None:
                weak_val, strong_val = align(weak_val, strong_val)
            if len(weak_test) == 0:
                raise ValueError("no common test examples")
        except ValueError as e:
            warnings.append(f"cascade {u['weak_run']}→{u['ceiling_run']}: {e}")
            continue
        c_weak, c_strong = _costs(u, cost_weak, cost_strong, unit)
        seconds = (u["weak_seconds"], u["ceiling_seconds"])
        metrics, choices, grid = _unit_metrics(
            weak_test, strong_test, weak_val, strong_val, c_weak, c_strong, budgets, eps, seconds
        )
        ident = {k: u[k] for k in (*UNIT_KEYS, "seed", "weak_run", "ceiling_run")}
        unit_rows.append({**ident, **metrics, "cost_unit": unit})
        budget_rows += [{**ident, **c, "cost_unit": unit} for c in choices]
        curve_rows.append({**ident, **grid})
    units = pd.DataFrame(unit_rows)
    budget_df = pd.DataFrame(budget_rows)
    table = _pair_table(units, budget_df, budgets)
    curves = _mean_curves(curve_rows)
    calibration, reliability = _weak_calibration(units_in, store, n_bins)
    return CascadeResults(units, table, budget_df, curves, calibration, reliability, warnings)


def _pair_table(
    units: pd.DataFrame, budget_df: pd.DataFrame, budgets: list[Budget]
) -> pd.DataFrame:
    if units.empty:
        return pd.DataFrame(columns=[*UNIT_KEYS, "n_seeds"])
    keys = list(UNIT_KEYS)
    skip = (*keys, "seed", "weak_run", "ceiling_run", "monotone", "cost_unit")
    metric_cols = [c for c in units.columns if c not in skip]
    grouped = units.groupby(keys, sort=True)
    table = grouped[metric_cols].mean().reset_index()
    table.insert(len(keys), "n_seeds", grouped.size().to_numpy())
    # monotone only if every seed's curve is; n_nonmonotone counts the seeds that are not
    table["monotone"] = grouped["monotone"].all().to_numpy()
    table["n_nonmonotone"] = (
        grouped["monotone"].apply(lambda m: int((~m.astype(bool)).sum())).to_numpy()
    )
    table["cost_unit"] = grouped["cost_unit"].first().to_numpy()
    if budgets and not budget_df.empty:
        first = budget_df[budget_df["budget_label"] == budgets[0].label]
        agg = first.groupby(keys, sort=True).agg(
            budget=("budget", "mean"),
            tau=("tau", "median"),
            budget_test_accuracy=("test_accuracy", "mean"),
            budget_test_share=("test_share", "mean"),
            budget_test_cost=("test_cost", "mean"),
            budget_test_seconds=("test_seconds", "mean"),
        )
        table = table.merge(agg.reset_index(), on=keys, how="left")
        table["budget_label"] = budgets[0].label
    return table


def _mean_curves(curve_rows: list[dict]) -> pd.DataFrame:
    """Deferral curves on a 101-point share grid, averaged over seeds (long format)."""
    columns = [*UNIT_KEYS, "share", "n_seeds", "cascade", "random", "oracle"]
    by_pair: dict[tuple, list[dict]] = {}
    for r in curve_rows:
        by_pair.setdefault(tuple(r[k] for k in UNIT_KEYS), []).append(r)
    if not by_pair:
        return pd.DataFrame(columns=columns)
    keys = sorted(by_pair)
    m = len(CURVE_GRID)
    data = {k: np.repeat([key[i] for key in keys], m) for i, k in enumerate(UNIT_KEYS)}
    data["share"] = np.tile(CURVE_GRID, len(keys))
    data["n_seeds"] = np.repeat([len(by_pair[key]) for key in keys], m)
    for name in ("cascade", "random", "oracle"):
        data[name] = np.concatenate(
            [np.mean([r[name] for r in by_pair[key]], axis=0) for key in keys]
        )
    return pd.DataFrame(data, columns=columns)


def _weak_calibration(units_in: pd.DataFrame, store: PredictionStore, n_bins: int):
    """Per (task, weak_model): AURC and ECE averaged over weak runs; reliability bins pooled."""
    rows, bins = [], []
    weak_runs = units_in.drop_duplicates("weak_run")
    for (task, weak_model), group in weak_runs.groupby(["task", "weak_model"], sort=True):
        conf, corr, per_run = [], [], []
        for d in group["weak_dir"]:
            preds = store.get(d)
            if preds is None:
                continue
            conf.append(preds.confidence)
            corr.append(preds.correct)
            per_run.append(
                (
                    aurc(preds.confidence, preds.correct),
                    ece(preds.confidence, preds.correct, n_bins),
                    preds.correct.mean(),
                )
            )
        if not per_run:
            continue
        arr = np.array(per_run)
        rows.append(
            {
                "task": task,
                "weak_model": weak_model,
                "n_seeds": len(per_run),
                "accuracy": arr[:, 2].mean(),
                "aurc": arr[:, 0].mean(),
                "ece": arr[:, 1].mean(),
            }
        )
        rel = reliability_bins(np.concatenate(conf), np.concatenate(corr), n_bins)
        rel.insert(0, "weak_model", weak_model)
        rel.insert(0, "task", task)
        rel["n_seeds"] = len(per_run)
        bins.append(rel)
    calibration = pd.DataFrame(
        rows, columns=["task", "weak_model", "n_seeds", "accuracy", "aurc", "ece"]
    )
    reliability = pd.concat(bins, ignore_index=True) if bins else pd.DataFrame()
    return calibration, reliability
