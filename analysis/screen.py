"""Which tasks have a weak–ceiling gap at all, from weak and ceiling runs alone.

PGR divides by acc_ceiling − acc_weak; where that gap is within test noise, PGR is undefined
whatever the w2s run does. A suite screened first (``kinds=[weak,ceiling]``) spends its w2s
runs only on tasks with a gap. A weak run and a ceiling run are partners when they drew the
same rows (their recorded ``rows`` hash) for the same task and seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.predictions import PredictionStore, align
from analysis.runs import json_field
from analysis.tables import MISSING, Table, fmt, short_model
from w2s.stats import GAP_SE_K, describe_interval, paired_gap_se, t_interval, tiny_gap

PAIR = ["task", "seed", "rows"]


def gap_pairs(runs: pd.DataFrame, store: PredictionStore, k: float = GAP_SE_K,
              eps: float = 0.0) -> pd.DataFrame:
    """One row per (weak run, ceiling run) on the same rows: accuracies, the gap, its paired
    SE on test, whether it clears ``k`` SE (and ``eps``), and both runs' flags."""
    cols = ["task", "weak_model", "strong_model", "seed", "weak_run", "ceiling_run", "acc_weak",
            "acc_ceiling", "gap", "gap_se", "gap_ok", "flags"]
    if runs.empty or "rows" not in runs:
        return pd.DataFrame(columns=cols)
    weak = runs[(runs["kind"] == "weak") & runs["rows"].notna()]
    ceiling = runs[(runs["kind"] == "ceiling") & runs["rows"].notna()]
    both = weak.merge(ceiling, on=PAIR, suffixes=("_w", "_c"))
    out = []
    for r in both.itertuples(index=False):
        w, c = store.get(r.run_dir_w), store.get(r.run_dir_c)
        se = np.nan
        if w is not None and c is not None:
            try:
                w, c = align(w, c)
                se = paired_gap_se(w.correct, c.correct)
            except ValueError:
                pass
        gap = float(r.accuracy_c - r.accuracy_w)
        flags = sorted({f"{kind}:{f}" for kind, raw in (("weak", r.flags_w), ("ceiling", r.flags_c))
                        for f in (json_field(raw) or [])})
        out.append({
            "task": r.task, "weak_model": r.weak_model_w, "strong_model": r.strong_model_c,
            "seed": r.seed, "weak_run": r.run_id_w, "ceiling_run": r.run_id_c,
            "acc_weak": float(r.accuracy_w), "acc_ceiling": float(r.accuracy_c), "gap": gap,
            "gap_se": se, "gap_ok": not tiny_gap(gap, se, k, eps), "flags": ",".join(flags),
        })
    return pd.DataFrame(out, columns=cols).sort_values(["task", "weak_model", "seed"],
                                                         ignore_index=True)


def screen(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (task, weak, strong): mean accuracies, the mean gap with a t-interval over seeds,
    how many seeds clear the noise rule, and a verdict: gap (every seed), none, or mixed."""
    rows = []
    for (task, weak, strong), g in pairs.groupby(["task", "weak_model", "strong_model"]):
        lo, hi = t_interval(g["gap"].to_numpy(float))
        n_ok = int(g["gap_ok"].sum())
        verdict = "gap" if n_ok == len(g) else "none" if n_ok == 0 else "mixed"
        rows.append({
            "task": task, "weak_model": weak, "strong_model": strong, "n_seeds": len(g),
            "acc_weak": g["acc_weak"].mean(), "acc_ceiling": g["acc_ceiling"].mean(),
            "gap": g["gap"].mean(), "gap_lo": lo, "gap_hi": hi, "gap_se": g["gap_se"].mean(),
            "n_seeds_gap_ok": n_ok, "verdict": verdict,
            "flags": ",".join(sorted({f for x in g["flags"] if x for f in x.split(",")})),
        })
    cols = ["task", "weak_model", "strong_model", "n_seeds", "acc_weak", "acc_ceiling", "gap",
            "gap_lo", "gap_hi", "gap_se", "n_seeds_gap_ok", "verdict", "flags"]
    order = {"gap": 0, "mixed": 1, "none": 2}
    out = pd.DataFrame(rows, columns=cols)
    if out.empty:
        return out
    return out.sort_values(["verdict", "gap"], key=lambda s: s.map(order) if s.name == "verdict"
                           else -s, ignore_index=True)


def screen_table(summary: pd.DataFrame, k: float = GAP_SE_K) -> Table:
    if summary.empty:
        empty = pd.DataFrame(columns=summary.columns)
        return Table("screen", "Weak–ceiling gap per task", empty, empty,
                     ["No weak and ceiling runs on the same rows."])
    n = summary["n_seeds"]
    display = pd.DataFrame({
        "task": summary["task"].astype(str),
        "weak": summary["weak_model"].map(short_model),
        "strong": summary["strong_model"].map(short_model),
        "seeds": n.astype(int).astype(str),
        "acc weak": summary["acc_weak"].map(fmt),
        "acc ceiling": summary["acc_ceiling"].map(fmt),
        "gap [95% t]": [
            f"{fmt(g)} [{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else f"{fmt(g)} [{MISSING}]"
            for g, lo, hi in zip(summary["gap"], summary["gap_lo"], summary["gap_hi"], strict=True)
        ],
        "SE (paired, test)": summary["gap_se"].map(fmt),
        f"seeds ≥ {k:g} SE": [f"{a}/{b}" for a, b in
                              zip(summary["n_seeds_gap_ok"], n, strict=True)],
        "verdict": summary["verdict"],
        "flags": summary["flags"].replace("", MISSING),
    })
    n_min = int(n.min())
    notes = [
        "Gap = acc_ceiling − acc_weak on test, mean over seeds; interval: "
        f"{describe_interval('t' if n_min >= 2 else 'none', n_min)} (the fewest seeds of a row).",
        f"A seed clears the noise rule when its gap is ≥ {k:g} × the SE of the paired test "
        "difference (w2s-analyze --gap-se). verdict: gap (every seed clears it), none (no "
        "seed does: PGR is undefined there, leave the task out), mixed.",
        "flags: the weak or ceiling run's diagnostics (e.g. not_converged: its early-stopping "
        "budget ran out while the val loss was still falling).",
    ]
    return Table("screen", "Weak–ceiling gap per task", summary, display, notes)
