"""The paper's tables in three formats: Markdown (terminal, README), LaTeX (booktabs) and CSV.

CSV keeps full precision and full model names for further analysis; Markdown and LaTeX show
rounded numbers, short model names and footnotes saying how PGR was aggregated and which rows
are flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.pgr import AGGREGATION_NOTE, PAIR_KEYS

MISSING = "–"
FLAG = "†"
EXAMPLE_CI = "‡"


@dataclass
class Table:
    """One table: numeric data for CSV, formatted cells for Markdown/LaTeX, and footnotes."""

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def short_model(name: object) -> str:
    """``Qwen/Qwen2.5-0.5B`` → ``Qwen2.5-0.5B``: the hub namespace only costs width."""
    return str(name).rstrip("/").rsplit("/", 1)[-1] if isinstance(name, str) else MISSING


def fmt(x: object, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, float | np.floating):
        return "∞" if math.isinf(x) else f"{x:.{digits}f}"
    return str(x)


def _key_label(key: str) -> str:
    return key.removeprefix("config.")


def main_table(summary: pd.DataFrame, group_keys: list[str], eps: float, n_resamples: int) -> Table:
    """Accuracies, PGR mean [CI], median, AUROC-PGR, agreement, seeds and the gap flag."""
    keys = [*PAIR_KEYS, *group_keys]
    if summary.empty:
        empty = pd.DataFrame(columns=keys)
        return Table("pgr_main", "Weak-to-strong results", empty, empty, ["No finished w2s runs."])
    display = pd.DataFrame(
        {
            "task": summary["task"].astype(str),
            "weak": summary["weak_model"].map(short_model),
            "strong": summary["strong_model"].map(short_model),
            "loss": summary["loss"].astype(str),
            **{_key_label(k): summary[k].map(fmt) for k in group_keys},
            "seeds": summary["n_seeds"].astype(int).astype(str),
            "acc weak": summary["acc_weak"].map(fmt),
            "acc ceiling": summary["acc_ceiling"].map(fmt),
            "acc w2s": summary["acc_w2s"].map(fmt),
            "PGR mean [95% CI]": [
                f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]{EXAMPLE_CI if meth == 'examples' else ''}"
                if np.isfinite(lo)
                else fmt(m)
                for m, lo, hi, meth in zip(
                    summary["pgr_mean"],
                    summary["pgr_ci_low"],
                    summary["pgr_ci_high"],
                    summary["ci_method"],
                    strict=True,
                )
            ],
            "PGR median": summary["pgr_median"].map(fmt),
            "PGR (AUROC)": summary["pgr_auroc_mean"].map(fmt),
            "agree": summary["agreement"].map(fmt),
            "gap": [
                (f"{FLAG}{f}/{p}" if f else "ok") + (f" ({u} unpaired)" if u else "")
                for f, u, p in zip(
                    summary["n_flagged"], summary["n_unpaired"], summary["n_paired"], strict=True
                )
            ],
        }
    )
    n_flagged = int(summary["n_flagged"].sum())
    notes = [AGGREGATION_NOTE.format(n_resamples=f"{n_resamples:,}", eps=eps)]
    if n_flagged:
        n_rows = int((summary["n_flagged"] > 0).sum())
        notes.append(
            f"{FLAG} k/n: k of the n paired seeds have acc_ceiling − acc_weak ≤ {eps:g}, so their "
            f"PGR is undefined ({n_flagged} seeds in {n_rows} rows)."
        )
    else:
        notes.append(f"Gap: every paired seed has acc_ceiling − acc_weak > {eps:g}.")
    if (summary["ci_method"] == "examples").any():
        notes.append(f"{EXAMPLE_CI} single seed: CI from resampling test examples jointly.")
    notes.append(
        "acc: test accuracy, mean over seeds. PGR (AUROC): the same ratio from test AUROC, mean. "
        "agree: share of test examples where the w2s and weak argmax agree, mean."
    )
    if summary["n_unpaired"].sum():
        notes.append(
            f"{int(summary['n_unpaired'].sum())} w2s runs lack a weak or ceiling run (unpaired)."
        )
    data = summary[[*keys] + [c for c in summary.columns if c not in keys]]
    return Table("pgr_main", "Weak-to-strong results", data, display, notes)


def burns_table(pairs: pd.DataFrame) -> Table:
    """Median PGR per loss (rows) per task (columns), over all (weak, strong) pairs and seeds."""
    ok = pairs[pairs["gap_ok"]] if not pairs.empty else pairs
    if ok.empty:
        empty = pd.DataFrame(columns=["loss"])
        return Table(
            "pgr_by_loss",
            "Median PGR per loss and task",
            empty,
            empty,
            ["No pair with a defined PGR."],
        )
    med = ok.pivot_table(index="loss", columns="task", values="pgr", aggfunc="median")
    cnt = ok.pivot_table(index="loss", columns="task", values="pgr", aggfunc="count")
    med["all tasks"] = ok.groupby("loss")["pgr"].median()
    cnt["all tasks"] = ok.groupby("loss")["pgr"].count()
    display = pd.DataFrame(index=med.index)
    for col in med.columns:
        display[str(col)] = [
            f"{fmt(m)} ({int(n)})" if np.isfinite(m) else MISSING
            for m, n in zip(med[col], cnt[col].fillna(0), strict=True)
        ]
    display = display.reset_index()
    data = med.add_prefix("median_pgr:").join(cnt.add_prefix("n:")).reset_index()
    n_flagged = int((pairs["paired"] & ~pairs["gap_ok"]).sum())
    notes = [
        "Median over every (weak, strong) pair and seed of the per-seed PGR, as in Burns et al. "
        "(2023); (n) = number of runs.",
        f"Left out: {n_flagged} runs whose ceiling does not beat the weak model (PGR undefined).",
    ]
    return Table("pgr_by_loss", "Median PGR per loss and task", data, display, notes)


def cascade_table(table: pd.DataFrame) -> Table:
    """Deferral-curve area, strong calls for 20/50/80 % PGR and the val-chosen budget threshold."""
    if table.empty:
        empty = pd.DataFrame(columns=["task"])
        return Table(
            "cascade", "Weak→strong cascade", empty, empty, ["No pair with test predictions."]
        )
    budget_label = table["budget_label"].iloc[0] if "budget_label" in table else None
    display = pd.DataFrame(
        {
            "task": table["task"].astype(str),
            "weak": table["weak_model"].map(short_model),
            "strong": table["strong_model"].map(short_model),
            "seeds": table["n_seeds"].astype(str),
            "acc weak": table["acc_weak"].map(fmt),
            "acc strong": table["acc_strong"].map(fmt),
            "AUDC": table["audc"].map(fmt),
            "AUDC norm.": table["audc_norm"].map(fmt),
            "r@20%": table["share_pgr20"].map(lambda x: fmt(x, 2)),
            "r@50%": table["share_pgr50"].map(lambda x: fmt(x, 2)),
            "r@80%": table["share_pgr80"].map(lambda x: fmt(x, 2)),
        }
    )
    notes = [
        "Weak model answers; its least confident (max-probability) test examples go to the strong "
        "model (the ceiling run). Means over seeds.",
        "AUDC: area under accuracy vs share deferred r ∈ [0, 1]; norm. = (AUDC − random)/(oracle − random), "
        "random = straight line weak→strong, oracle = weak errors the strong model fixes deferred first.",
        "r@p: share of strong calls at which the cascade recovers p of the weak→strong accuracy gap.",
    ]
    if budget_label is not None:
        display["τ"] = table["tau"].map(fmt)
        display["acc @ budget"] = table["budget_test_accuracy"].map(fmt)
        display["r @ budget"] = table["budget_test_share"].map(lambda x: fmt(x, 2))
        notes.append(
            f"τ: defer when weak confidence < τ; chosen on val as the most accurate threshold whose "
            f"cost per example c_weak + r·c_strong stays within the budget ({budget_label}), then "
            "scored on test (acc and r @ budget)."
        )
    return Table("cascade", "Weak→strong cascade", table, display, notes)


def calibration_table(calibration: pd.DataFrame) -> Table:
    """Weak model test accuracy, AURC and ECE, means over seeds."""
    display = pd.DataFrame(
        {
            "task": calibration["task"].astype(str),
            "weak": calibration["weak_model"].map(short_model),
            "seeds": calibration["n_seeds"].astype(str),
            "acc": calibration["accuracy"].map(fmt),
            "AURC": calibration["aurc"].map(fmt),
            "ECE": calibration["ece"].map(fmt),
        }
    )
    notes = [
        "AURC: mean selective risk over coverages k/n (lower is better). ECE: equal-width bins, "
        "weighted |accuracy − confidence|. Confidence = max probability. Means over seeds."
    ]
    return Table("calibration", "Weak model calibration (test)", calibration, display, notes)


def render_markdown(table: Table) -> str:
    d = table.display
    if d.empty:
        return f"### {table.title}\n\n(no rows)\n\n" + "".join(f"- {n}\n" for n in table.notes)
    cells = [list(d.columns)] + d.astype(str).values.tolist()
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(d.columns))]
    lines = [f"### {table.title}", ""]
    for j, r in enumerate(cells):
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        )
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines + [""] + [f"- {n}" for n in table.notes]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "−": "$-$",
    "→": r"$\to$",
    "≤": r"$\le$",
    "±": r"$\pm$",
    "·": r"$\cdot$",
    "τ": r"$\tau$",
    "∞": r"$\infty$",
    "∈": r"$\in$",
    FLAG: r"\textsuperscript{\dag}",
    EXAMPLE_CI: r"\textsuperscript{\ddag}",
}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: Table) -> str:
    d = table.display
    text_cols = {"task", "weak", "strong", "loss"}
    spec = "".join("l" if c in text_cols else "r" for c in d.columns) or "l"
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(table.title)}}}",
        rf"\label{{tab:{table.name.replace('_', '-')}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in d.columns) + r" \\",
        r"\midrule",
    ]
    lines += [
        " & ".join(latex_escape(c) for c in row) + r" \\" for row in d.astype(str).values.tolist()
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\footnotesize"] + [latex_escape(n) + r"\\" for n in table.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    """``<name>.md``, ``<name>.tex`` and ``<name>.csv`` (numeric, full precision)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{table.name}.{ext}" for ext in ("md", "tex", "csv")]
    paths[0].write_text(render_markdown(table))
    paths[1].write_text(render_latex(table))
    table.data.drop(columns=["pattern_counts"], errors="ignore").to_csv(paths[2], index=False)
    return paths
