"""Statistics across tasks: on how many tasks does weak-to-strong training help, and by how much.

Per task (and weak model, strong model, loss): the main table's PGR, the mean over seeds with its
Student-t interval (one seed: the bootstrap over its test examples). Across tasks: the mean and
the median of those per-task means, with a hierarchical bootstrap interval (tasks, then seeds
within each drawn task; `analysis.stats.grouped_hierarchical_bootstrap`), since the tasks run are
themselves a sample. Loss comparisons take PGR_A − PGR_B per seed only over w2s runs trained
against the same weak and ceiling runs (by recorded id): with another ceiling run the
difference would mix the losses with the ceilings. Tasks whose PGR is undefined are listed with
the reason, counted, and left out of the across-task numbers, never dropped silently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from analysis.stats import (
    BOOTSTRAP_SEED,
    CI_LEVEL,
    N_RESAMPLES,
    grouped_hierarchical_bootstrap,
    t_interval,
)

SETTING = ("weak_model", "strong_model")
# below this many tasks there is no across-task interval: a bootstrap over one task is only a
# bootstrap over its seeds
MIN_TASKS = 2
FEW_TASKS = 5  # below this many tasks a bootstrap over tasks is about their range: flagged
ACROSS_MEAN = "across tasks: mean"
ACROSS_MEDIAN = "across tasks: median"
# why a seed of a loss comparison is not paired, in the order the tables list them
EXCLUSIONS = ("other_runs", "undefined", "unpaired", "several", "only_a", "only_b")


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def variant_label(loss: object, keys: Sequence[str], values: Sequence[object]) -> str:
    """``logconf`` or ``logconf (loss.aux_coef=0.25)``: a loss with the values of the group keys
    that split its rows, so the settings of a sweep are compared as separate losses. Missing
    values are left out (a key that only some losses have does not split the others)."""
    parts = [
        f"{k.removeprefix('config.')}={v:g}"
        if isinstance(v, float)
        else f"{k.removeprefix('config.')}={v}"
        for k, v in zip(keys, values, strict=True)
        if not _missing(v)
    ]
    return f"{loss} ({', '.join(parts)})" if parts else str(loss)


def add_variants(frame: pd.DataFrame, group_keys: Sequence[str] | None = None) -> pd.Series:
    """`variant_label` of every row of a pairs or summary frame."""
    keys = list(group_keys or [])
    columns = [frame[k].tolist() for k in keys]
    labels = [
        variant_label(loss, keys, values)
        for loss, *values in zip(frame["loss"].tolist(), *columns, strict=True)
    ]
    return pd.Series(labels, index=frame.index, dtype=object)


def _seeds_word(n: int) -> str:
    return "seed" if n == 1 else "seeds"


def left_out_text(n_runs: int, n_flagged: int, n_unpaired: int, n_seeds: int) -> str:
    """Why seeds of a task are not in its PGR: ``1/3 seeds tiny gap``, and for a task with none
    left ``undefined: 3/3 seeds tiny gap`` (empty when every seed counts)."""
    parts = []
    if n_flagged:
        parts.append(f"{n_flagged}/{n_runs} {_seeds_word(n_runs)} tiny gap")
    if n_unpaired:
        parts.append(f"{n_unpaired}/{n_runs} {_seeds_word(n_runs)} unpaired")
    text = ", ".join(parts)
    return f"undefined: {text or 'no seed'}" if n_seeds == 0 else text


def _interval_or_nan(result: dict, name: str, n_used: int) -> tuple[float, float]:
    return result[name] if n_used >= MIN_TASKS else (float("nan"), float("nan"))


@dataclass
class AcrossTasks:
    """Per-task PGR rows (``tasks``) and one across-task row per (weak, strong, loss) (``across``)."""

    tasks: pd.DataFrame
    across: pd.DataFrame
    group_keys: list[str] = field(default_factory=list)
    n_resamples: int = N_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    level: float = CI_LEVEL


def task_statistics(
    summary: pd.DataFrame,
    pairs: pd.DataFrame,
    group_keys: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> AcrossTasks:
    """PGR per task and across tasks, from `analysis.pgr.aggregate_pgr`'s ``summary`` and the
    per-seed ``pairs`` it was built from (after `flag_tiny_gaps`).

    A task's PGR is undefined when none of its seeds has ``gap_ok`` (tiny gap or unpaired); such
    tasks keep their row (``defined`` False, ``left_out`` saying why) and are counted in
    ``n_tasks_undefined``. The across-task mean and median use the defined tasks' mean PGR; their
    intervals resample tasks, then each drawn task's defined per-seed PGRs (none below
    ``MIN_TASKS`` tasks).
    """
    keys = list(group_keys or [])
    if summary.empty or pairs.empty:
        return AcrossTasks(pd.DataFrame(), pd.DataFrame(), keys, n_resamples, seed, level)
    tasks = summary.assign(variant=add_variants(summary, keys))
    tasks = tasks.sort_values([*SETTING, "variant", "task"], ignore_index=True)
    ok = pairs[pairs["gap_ok"].astype(bool) & np.isfinite(pairs["pgr"].to_numpy(dtype=float))]
    ok = ok.assign(variant=add_variants(ok, keys))
    by_task = {
        k: v.to_numpy(dtype=float)
        for k, v in ok.groupby([*SETTING, "variant", "task"], sort=False)["pgr"]
    }
    empty = np.empty(0)
    values = [
        by_task.get((w, s, v, t), empty)
        for w, s, v, t in zip(
            tasks["weak_model"], tasks["strong_model"], tasks["variant"], tasks["task"], strict=True
        )
    ]
    if [len(v) for v in values] != tasks["n_seeds"].astype(int).tolist():
        raise AssertionError("per-seed PGRs do not match the per-task PGR rows")
    tasks["seed_pgrs"] = [json.dumps([float(x) for x in v]) for v in values]
    tasks["defined"] = tasks["n_seeds"].astype(int) > 0
    tasks["left_out"] = [
        left_out_text(int(r), int(f), int(u), int(n))
        for r, f, u, n in zip(
            tasks["n_runs"], tasks["n_flagged"], tasks["n_unpaired"], tasks["n_seeds"], strict=True
        )
    ]
    rows, groups = [], []
    for (weak, strong, variant), g in tasks.groupby([*SETTING, "variant"], sort=True):
        used = g[g["defined"]]
        groups.append([values[i] for i in used.index])
        rows.append(
            {
                "weak_model": weak,
                "strong_model": strong,
                "variant": variant,
                "loss": g["loss"].iloc[0],
                **{k: g[k].iloc[0] for k in keys},
                "n_tasks": len(g),
                "n_tasks_used": len(used),
                "n_tasks_undefined": len(g) - len(used),
                "tasks_undefined": ", ".join(map(str, g.loc[~g["defined"], "task"])),
                "seeds_per_task": ", ".join(
                    f"{t} {int(n)}" for t, n in zip(used["task"], used["n_seeds"], strict=True)
                ),
                "n_pgr_positive": int((used["pgr_mean"] > 0).sum()),
            }
        )
    results = grouped_hierarchical_bootstrap(groups, n_resamples, level, seed)
    for row, result in zip(rows, results, strict=True):
        n_used = row["n_tasks_used"]
        mean_ci = _interval_or_nan(result, "mean_ci", n_used)
        median_ci = _interval_or_nan(result, "median_ci", n_used)
        row.update(
            pgr_mean=result["mean"],
            pgr_mean_low=mean_ci[0],
            pgr_mean_high=mean_ci[1],
            pgr_median=result["median"],
            pgr_median_low=median_ci[0],
            pgr_median_high=median_ci[1],
            ci_method="hierarchical" if n_used >= MIN_TASKS else "none",
        )
    return AcrossTasks(tasks, pd.DataFrame(rows), keys, n_resamples, seed, level)


def paired_seeds(rows_a: list[dict], rows_b: list[dict]) -> dict:
    """Seeds of one task where loss A's and loss B's w2s runs share their weak and ceiling runs.

    Rows are `pair_runs` records. Per seed, the A and B runs pair when both are paired, record
    the same ``weak_runs`` (in order) and the same ``ceiling_run``, and both have a defined PGR
    (``gap_ok``). Everything else is counted by reason: ``other_runs`` (another weak or
    ceiling run), ``undefined`` (tiny gap), ``unpaired``, ``several`` (more than one run of a
    loss for the seed: which to pair is ambiguous), ``only_a`` / ``only_b``.
    """
    by_seed: list[dict] = [{}, {}]
    for side, rows in zip(by_seed, (rows_a, rows_b), strict=True):
        for r in rows:
            side.setdefault(r["seed"], []).append(r)
    counts = dict.fromkeys(EXCLUSIONS, 0)
    seeds, pgr_a, pgr_b = [], [], []
    for s in sorted(set(by_seed[0]) | set(by_seed[1]), key=lambda x: (str(type(x)), x)):
        ra, rb = by_seed[0].get(s, []), by_seed[1].get(s, [])
        if not ra or not rb:
            counts["only_b" if not ra else "only_a"] += 1
        elif len(ra) > 1 or len(rb) > 1:
            counts["several"] += 1
        elif not (ra[0]["paired"] and rb[0]["paired"]):
            counts["unpaired"] += 1
        elif (ra[0]["weak_runs"], ra[0]["ceiling_run"]) != (
            rb[0]["weak_runs"],
            rb[0]["ceiling_run"],
        ):
            counts["other_runs"] += 1
        elif not (ra[0]["gap_ok"] and rb[0]["gap_ok"]):
            counts["undefined"] += 1
        else:
            seeds.append(s)
            pgr_a.append(float(ra[0]["pgr"]))
            pgr_b.append(float(rb[0]["pgr"]))
    n_seeds = len(set(by_seed[0]) | set(by_seed[1]))
    return {
        "seeds": seeds,
        "pgr_a": np.array(pgr_a),
        "pgr_b": np.array(pgr_b),
        "n_seeds": n_seeds,
        **counts,
    }


def excluded_text(result: dict, a: str, b: str) -> str:
    """``1/3 other weak/ceiling run; 2/5 only logconf``: the seeds a comparison could not use,
    of all seeds either loss has on the task."""
    labels = {
        "other_runs": "other weak/ceiling run",
        "undefined": "tiny gap",
        "unpaired": "unpaired",
        "several": "several runs per seed",
        "only_a": f"only {a}",
        "only_b": f"only {b}",
    }
    n = result["n_seeds"]
    return "; ".join(f"{result[k]}/{n} {text}" for k, text in labels.items() if result[k])


def _comparisons(
    variants: list[str], loss_of: dict[str, str], compare: Sequence[str] | None
) -> list[tuple[str, str]]:
    """Every pair of losses (alphabetical, A − B), or the variants named by ``compare``."""
    variants = sorted(variants)
    if compare is None:
        return list(combinations(variants, 2))
    a, b = compare

    def named(name: str) -> list[str]:
        return [v for v in variants if name in (v, loss_of[v])]

    return [(x, y) for x in named(a) for y in named(b) if x != y]


@dataclass
class LossComparison:
    """Per-task paired differences (``tasks``) and one across-task row per comparison."""

    tasks: pd.DataFrame
    across: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    n_resamples: int = N_RESAMPLES
    seed: int = BOOTSTRAP_SEED
    level: float = CI_LEVEL


def compare_losses(
    pairs: pd.DataFrame,
    group_keys: Sequence[str] | None = None,
    compare: Sequence[str] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> LossComparison:
    """Paired PGR differences between losses, per task and across tasks, per (weak, strong).

    ``compare``: two loss names (or variant labels) to compare A − B; default every pair of
    losses present. Per task: the mean (and median) over the seeds `paired_seeds` keeps of
    PGR_A − PGR_B, a Student-t interval over them (≥ 2 seeds), and the counts of seeds left
    out. Across tasks (those with ≥ 1 paired seed): the mean and median of the per-task means
    with the hierarchical bootstrap interval, the tasks where the mean difference is > 0 / < 0
    and where its t-interval lies above / below 0.
    """
    keys = list(group_keys or [])
    out = LossComparison(pd.DataFrame(), pd.DataFrame(), [], n_resamples, seed, level)
    if pairs.empty:
        return out
    frame = pairs.assign(variant=add_variants(pairs, keys))
    cols = ["seed", "paired", "gap_ok", "pgr", "weak_runs", "ceiling_run"]
    records: dict[tuple, list[dict]] = {}
    for r in frame[[*SETTING, "variant", "loss", "task", *cols]].to_dict("records"):
        key = (r["weak_model"], r["strong_model"], r["variant"], r["task"])
        records.setdefault(key, []).append(r)
    loss_of = dict(zip(frame["variant"], frame["loss"].astype(str), strict=True))
    settings: dict[tuple, dict[str, set]] = {}
    for weak, strong, variant, task in records:
        settings.setdefault((weak, strong), {}).setdefault(variant, set()).add(task)
    if compare is not None:
        missing = [n for n in compare if not any(n in (v, loss_of[v]) for v in loss_of)]
        if missing:
            out.warnings.append(
                f"--compare: no loss named {', '.join(missing)}; losses: {', '.join(sorted(loss_of))}"
            )
    task_rows, across_rows, groups = [], [], []
    for (weak, strong), variants in sorted(settings.items(), key=lambda kv: tuple(map(str, kv[0]))):
        for a, b in _comparisons(list(variants), loss_of, compare):
            names = sorted(variants[a] | variants[b], key=str)
            per_task = []
            for task in names:
                result = paired_seeds(
                    records.get((weak, strong, a, task), []),
                    records.get((weak, strong, b, task), []),
                )
                diffs = result["pgr_a"] - result["pgr_b"]
                lo, hi = t_interval(diffs, level) if len(diffs) >= 2 else (np.nan, np.nan)
                per_task.append(diffs)
                task_rows.append(
                    {
                        "weak_model": weak,
                        "strong_model": strong,
                        "variant_a": a,
                        "variant_b": b,
                        "comparison": f"{a} − {b}",
                        "task": task,
                        "n_pairs": len(diffs),
                        "n_seeds": result["n_seeds"],
                        **{f"n_{k}": result[k] for k in EXCLUSIONS},
                        "excluded": excluded_text(result, a, b),
                        "defined": len(diffs) > 0,
                        "pgr_a": result["pgr_a"].mean() if len(diffs) else np.nan,
                        "pgr_b": result["pgr_b"].mean() if len(diffs) else np.nan,
                        "diff_mean": diffs.mean() if len(diffs) else np.nan,
                        "diff_median": float(np.median(diffs)) if len(diffs) else np.nan,
                        "diff_ci_low": lo,
                        "diff_ci_high": hi,
                        "ci_method": "t" if len(diffs) >= 2 else "none",
                        "seeds": json.dumps([_jsonable(s) for s in result["seeds"]]),
                        "seed_diffs": json.dumps([float(d) for d in diffs]),
                    }
                )
            rows = task_rows[len(task_rows) - len(names) :]
            used = [r for r in rows if r["defined"]]
            groups.append([d for d in per_task if len(d)])
            across_rows.append(
                {
                    "weak_model": weak,
                    "strong_model": strong,
                    "variant_a": a,
                    "variant_b": b,
                    "comparison": f"{a} − {b}",
                    "n_tasks": len(rows),
                    "n_tasks_used": len(used),
                    "n_tasks_undefined": len(rows) - len(used),
                    "tasks_undefined": ", ".join(str(r["task"]) for r in rows if not r["defined"]),
                    "seeds_per_task": ", ".join(f"{r['task']} {r['n_pairs']}" for r in used),
                    "n_positive": sum(r["diff_mean"] > 0 for r in used),
                    "n_negative": sum(r["diff_mean"] < 0 for r in used),
                    "n_with_ci": sum(r["ci_method"] == "t" for r in used),
                    "n_ci_positive": sum(r["diff_ci_low"] > 0 for r in used),
                    "n_ci_negative": sum(r["diff_ci_high"] < 0 for r in used),
                }
            )
    results = grouped_hierarchical_bootstrap(groups, n_resamples, level, seed)
    for row, result in zip(across_rows, results, strict=True):
        n_used = row["n_tasks_used"]
        mean_ci = _interval_or_nan(result, "mean_ci", n_used)
        median_ci = _interval_or_nan(result, "median_ci", n_used)
        row.update(
            share_positive=row["n_positive"] / n_used if n_used else np.nan,
            diff_mean=result["mean"],
            diff_mean_low=mean_ci[0],
            diff_mean_high=mean_ci[1],
            diff_median=result["median"],
            diff_median_low=median_ci[0],
            diff_median_high=median_ci[1],
            ci_method="hierarchical" if n_used >= MIN_TASKS else "none",
        )
    out.tasks, out.across = pd.DataFrame(task_rows), pd.DataFrame(across_rows)
    return out


def _jsonable(x: object) -> object:
    return x.item() if isinstance(x, np.generic) else x
