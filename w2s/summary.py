"""The end-of-experiment summary the ``w2s`` CLI prints: per-seed accuracies and PGR, the mean
with a Student-t interval over seeds, a two-level bootstrap, and the seeds whose ceiling − weak
gap is too small for PGR to mean anything (flagged and left out of the PGR mean).

Numbers come from the experiment's table; the runs' stored test predictions (found by run id)
give the paired SE of each gap and the two-level bootstrap. Without them the summary falls back
to the t-interval from the per-seed accuracies alone.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from w2s.stats import (
    CI_LEVEL,
    FEW_SEEDS,
    GAP_SE_K,
    N_RESAMPLES,
    describe_interval,
    paired_gap_se,
    t_interval,
    tiny_gap,
    two_level_bootstrap,
)
from w2s.store import RunStore

FLAG = "†"
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError)


def _missing(x: object) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x == ""


def _test_rows(store: RunStore, kind: str, rid: str) -> pd.DataFrame:
    df = store.predictions(kind, rid)
    return df[df["split"] == "test"].drop_duplicates("id").set_index("id")


def _correct(rows: pd.DataFrame) -> np.ndarray:
    """Each row's correctness: recorded (generative runs: exact match) or argmax == label."""
    if "correct" in rows:
        return rows["correct"].to_numpy(bool)
    return np.stack(rows["probs"].to_numpy()).argmax(axis=1) == rows["label"].to_numpy()


def seed_correctness(store: RunStore, row: pd.Series) -> tuple[np.ndarray, ...] | str:
    """Test correctness of (weak, ceiling, w2s) of one seed, aligned by example id, or why not.

    The weak side is the supervision the w2s run trained on: its ``weak_soft`` on test rows when
    recorded, else the weak run's own test predictions.
    """
    rids = {k: row.get(f"{k}_run_id") for k in ("weak", "ceiling", "w2s")}
    if _missing(rids["w2s"]) or _missing(rids["ceiling"]):
        return "no run ids"
    try:
        w2s = _test_rows(store, "w2s", str(rids["w2s"]))
        ceiling = _test_rows(store, "ceiling", str(rids["ceiling"]))
        soft = w2s["weak_soft"] if "weak_soft" in w2s else None
        if soft is not None and len(soft) and soft.map(lambda v: v is not None).all():
            weak = pd.DataFrame({"probs": soft, "label": w2s["label"]})
        elif not _missing(rids["weak"]):
            weak = _test_rows(store, "weak", str(rids["weak"]))
        else:
            return "no weak predictions"
        ids = w2s.index.intersection(ceiling.index).intersection(weak.index)
        if len(ids) == 0:
            return "no test example shared by the three runs"
        return tuple(
            _correct(d.loc[ids]) for d in (weak, ceiling, w2s)
        )
    except _READ_ERRORS as e:
        return f"predictions unreadable ({type(e).__name__})"


def summarize(
    table: pd.DataFrame,
    store: RunStore | None = None,
    gap_se: float = GAP_SE_K,
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
) -> str:
    """Per-seed lines, the mean, PGR with its interval over seeds, and the flagged seeds.

    A seed is flagged when ceiling − weak ≤ 0 or < ``gap_se`` standard errors of the paired test
    difference; its PGR is shown but left out of the mean and the intervals.
    """
    if not {"weak", "ceiling", "w2s"} <= set(table.columns) or table.empty:
        return table.to_string(index=False)
    rows = table.reset_index(drop=True)
    correct = [
        seed_correctness(store, r) if store is not None else "no store" for _, r in rows.iterrows()
    ]
    have = [not isinstance(c, str) for c in correct]
    gap = (rows["ceiling"] - rows["weak"]).to_numpy(dtype=float)
    se = np.array(
        [paired_gap_se(c[0], c[1]) if ok else np.nan for c, ok in zip(correct, have, strict=True)]
    )
    flagged = np.array([tiny_gap(g, s, gap_se) for g, s in zip(gap, se, strict=True)])
    with np.errstate(divide="ignore", invalid="ignore"):
        pgr = np.where(gap > 0, (rows["w2s"] - rows["weak"]).to_numpy(dtype=float) / gap, np.nan)
    kept = pgr[~flagged]

    lines = [f"{'seed':>6} {'weak':>8} {'ceiling':>8} {'w2s':>8} {'PGR':>8} {'gap':>7}"]
    for i, r in rows.iterrows():
        mark = FLAG if flagged[i] else " "
        p = f"{pgr[i]:>8.3f}" if np.isfinite(pgr[i]) else f"{'–':>8}"
        lines.append(
            f"{r['seed']!s:>6} {r['weak']:>8.4f} {r['ceiling']:>8.4f} {r['w2s']:>8.4f} "
            f"{p}{mark}{gap[i]:>7.3f}"
        )
    mean_pgr = f"{kept.mean():>8.3f}" if kept.size else f"{'–':>8}"
    lines.append(
        f"{'mean':>6} {rows['weak'].mean():>8.4f} {rows['ceiling'].mean():>8.4f} "
        f"{rows['w2s'].mean():>8.4f} {mean_pgr}"
    )

    n = int(kept.size)
    if n == 0:
        lines.append("PGR undefined: every seed is flagged (ceiling − weak too small)")
    elif n == 1:
        lines.append(f"PGR = {kept[0]:.3f} (1 seed); {describe_interval('none', 1, level)}")
    else:
        lo, hi = t_interval(kept, level)
        lines.append(
            f"PGR = {kept.mean():.3f} (mean of {n} seeds), "
            + describe_interval("t", n, level, (lo, hi))
        )
    if all(have) and n:
        boot = two_level_bootstrap(
            [c[0] for c in correct],
            [c[1] for c in correct],
            [c[2] for c in correct],
            n_resamples=n_resamples,
            level=level,
            keep=~flagged,
        )
        (plo, phi), pct = boot["pgr"], f"{100 * level:g}%"
        lines.append(
            f"two-level bootstrap (seeds, then test examples; {n_resamples} resamples): "
            f"PGR {pct} [{plo:.3f}, {phi:.3f}]"
            + (f" (fewer than {FEW_SEEDS} seeds: likely too narrow)" if n < FEW_SEEDS else "")
        )
    elif not all(have):
        missing = [
            str(r["seed"]) for (_, r), ok in zip(rows.iterrows(), have, strict=True) if not ok
        ]
        reason = next(c for c in correct if isinstance(c, str))
        lines.append(
            f"no test predictions for seed(s) {', '.join(missing)} ({reason}): interval from the "
            "per-seed accuracies only; for them the tiny-gap check is ceiling − weak ≤ 0 only"
        )
    for i in np.flatnonzero(flagged):
        seed = rows.at[i, "seed"]
        if not np.isfinite(gap[i]):
            lines.append(f"{FLAG} seed {seed}: no ceiling − weak gap: PGR undefined, left out")
        elif gap[i] <= 0:
            lines.append(
                f"{FLAG} seed {seed}: ceiling − weak = {gap[i]:.3f} ≤ 0: PGR undefined, left out"
            )
        else:
            lines.append(
                f"{FLAG} seed {seed}: ceiling − weak = {gap[i]:.3f} < {gap_se:g} SE "
                f"({gap_se * se[i]:.3f}) of the paired test difference: PGR left out"
            )
    return "\n".join(lines)
