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
from analysis.stats import CI_LEVEL, FEW_SEEDS, GAP_SE_K, describe_interval

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


def interval_caption(summary: pd.DataFrame, level: float = CI_LEVEL) -> str:
    """What the PGR interval column is, over how many seeds, and "wide" below 5 seeds."""
    parts = []
    ns = sorted({int(n) for n in summary.loc[summary["ci_method"] == "t", "n_seeds"]})
    if len(ns) == 1:
        parts.append(describe_interval("t", ns[0], level))
    elif ns:
        text = f"{100 * level:g}% Student-t interval over {ns[0]}–{ns[-1]} seeds"
        if ns[0] < FEW_SEEDS:
            text += f" (wide where fewer than {FEW_SEEDS} seeds)"
        parts.append(text)
    if (summary["ci_method"] == "examples").any():
        parts.append(f"a {100 * level:g}% bootstrap over test examples for 1 seed ({EXAMPLE_CI})")
    return "; ".join(parts)


def _interval_cells(mean, low, high, marks=None) -> list[str]:
    marks = marks if marks is not None else [""] * len(mean)
    return [
        f"{fmt(m)} [{fmt(lo)}, {fmt(hi)}]{mark}" if np.isfinite(lo) else fmt(m)
        for m, lo, hi, mark in zip(mean, low, high, marks, strict=True)
    ]


def main_table(
    summary: pd.DataFrame,
    group_keys: list[str],
    eps: float,
    n_resamples: int,
    gap_se: float = GAP_SE_K,
) -> Table:
    """Accuracies, PGR mean [interval], two-level bootstrap, median, AUROC-PGR, agreement, seeds
    and the gap flag; the title names the interval and its number of seeds."""
    keys = [*PAIR_KEYS, *group_keys]
    if summary.empty:
        empty = pd.DataFrame(columns=keys)
        return Table("pgr_main", "Weak-to-strong results", empty, empty, ["No finished w2s runs."])
    marks = [EXAMPLE_CI if m == "examples" else "" for m in summary["ci_method"]]
    columns = {
        "task": summary["task"].astype(str),
        "weak": summary["weak_model"].map(short_model),
        "strong": summary["strong_model"].map(short_model),
        "loss": summary["loss"].astype(str),
        **{_key_label(k): summary[k].map(fmt) for k in group_keys},
        "seeds": summary["n_seeds"].astype(int).astype(str),
        "acc weak": summary["acc_weak"].map(fmt),
        "acc ceiling": summary["acc_ceiling"].map(fmt),
        "acc w2s": summary["acc_w2s"].map(fmt),
        "PGR mean [95% CI]": _interval_cells(
            summary["pgr_mean"], summary["pgr_ci_low"], summary["pgr_ci_high"], marks
        ),
    }
    if "pgr_boot_low" in summary and np.isfinite(summary["pgr_boot_low"]).any():
        columns["PGR 2-level [95%]"] = [
            f"[{fmt(lo)}, {fmt(hi)}]" if np.isfinite(lo) else MISSING
            for lo, hi in zip(summary["pgr_boot_low"], summary["pgr_boot_high"], strict=True)
        ]
    columns.update(
        {
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
    display = pd.DataFrame(columns)
    n_flagged = int(summary["n_flagged"].sum())
    notes = [AGGREGATION_NOTE.format(n_resamples=f"{n_resamples:,}", eps=eps, k=gap_se)]
    se_rule = f" or < {gap_se:g} SE of the paired test difference" if gap_se > 0 else ""
    if n_flagged:
        n_rows = int((summary["n_flagged"] > 0).sum())
        notes.append(
            f"{FLAG} k/n: k of the n paired seeds have acc_ceiling − acc_weak ≤ {eps:g}{se_rule}; "
            f"their PGR is left out of the PGR columns ({n_flagged} seeds in {n_rows} rows)."
        )
    else:
        ok_rule = f" and ≥ {gap_se:g} SE of the paired test difference" if gap_se > 0 else ""
        notes.append(f"Gap: every paired seed has acc_ceiling − acc_weak > {eps:g}{ok_rule}.")
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
    caption = interval_caption(summary)
    title = "Weak-to-strong results" + (f"; PGR mean with {caption}" if caption else "")
    return Table("pgr_main", title, data, display, notes)


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


def _seconds(x: object) -> str:
    return f"{x:.3g}" if isinstance(x, float | np.floating) and np.isfinite(x) else MISSING


def cascade_table(table: pd.DataFrame) -> Table:
    """Deferral-curve area, APGR, CPT(20/50/80 %), monotonicity and the val-chosen budget τ."""
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
            "APGR": table["apgr"].map(fmt),
            "CPT(20%)": table["cpt20"].map(lambda x: fmt(x, 2)),
            "CPT(50%)": table["cpt50"].map(lambda x: fmt(x, 2)),
            "CPT(80%)": table["cpt80"].map(lambda x: fmt(x, 2)),
            "monotone": [
                "yes" if ok else f"no ({k}/{n}; {share:.0%})"
                for ok, k, n, share in zip(
                    table["monotone"],
                    table["n_nonmonotone"],
                    table["n_seeds"],
                    table["nonmonotone_share"],
                    strict=True,
                )
            ],
        }
    )
    unit = str(table["cost_unit"].iloc[0]) if "cost_unit" in table else "parameters"
    notes = [
        "Weak model answers; its least confident (max-probability) test examples go to the strong "
        "model (the ceiling run). Means over seeds.",
        "AUDC: area under accuracy a(s) vs share of strong calls s ∈ [0, 1]; norm. = (AUDC − random)/"
        "(oracle − random), random = straight line weak→strong, oracle = weak errors the strong "
        "model fixes deferred first.",
        "APGR = (AUDC − a_weak)/(a_strong − a_weak) (RouteLLM; random deferral gives 0.5). "
        "CPT(x%): smallest s with a(s) ≥ a_weak + x·(a_strong − a_weak).",
        "monotone: no (k/n; f): in k of n seeds the curve falls more than one example below its "
        "best at a smaller s, on a share f of the steps (mean over seeds).",
    ]
    if budget_label is not None:
        display["τ"] = table["tau"].map(fmt)
        display["acc @ budget"] = table["budget_test_accuracy"].map(fmt)
        display["s @ budget"] = table["budget_test_share"].map(lambda x: fmt(x, 2))
        if "budget_test_seconds" in table and np.isfinite(table["budget_test_seconds"]).any():
            display["sec/ex @ budget"] = table["budget_test_seconds"].map(_seconds)
        notes.append(
            f"τ: defer when weak confidence < τ; chosen on val as the most accurate threshold whose "
            f"cost per example c_weak + s·c_strong stays within the budget ({budget_label}), then "
            "scored on test (acc, share of strong calls s and measured seconds per example "
            "@ budget)."
        )
    notes.append(f"Costs c_weak, c_strong: {unit}.")
    return Table("cascade", "Weak→strong cascade", table, display, notes)


def annotate_main_table(table: Table, summary: pd.DataFrame, auto_keys: list[str]) -> Table:
    """Add the provenance flag (``code``) and the w2s backbone change to the main table.

    ``summary`` is the frame the table was built from (same rows, same order), with the columns
    of `analysis.pgr.add_group_columns`; ``auto_keys`` are the config keys that split rows
    because they vary between runs (named in a note).
    """
    if summary.empty or "code" not in summary:
        return table
    display = table.display.copy()
    display["code"] = summary["code"].astype(str).to_numpy()
    display["backbone Δ"] = summary["backbone_change"].map(fmt).to_numpy()
    mixed_ckpt = summary["checkpoints"].astype(str).str.startswith("MIXED")
    if mixed_ckpt.any():
        display["checkpoints"] = summary["checkpoints"].astype(str).to_numpy()
    notes = list(table.notes)
    notes.append(
        "code: same when every run behind the row (w2s runs and the weak, ceiling and previous "
        "runs they used) records one git commit and code version; MIXED (n commits) otherwise; "
        "unrecorded = runs written before provenance was recorded; dirty = uncommitted changes. "
        "backbone Δ: relative L2 distance of the w2s backbone from the pretrained one, mean."
    )
    if mixed_ckpt.any():
        notes.append("checkpoints: MIXED (model: n) = runs loaded n different checkpoints.")
    if auto_keys:
        notes.append(
            "Rows are split by every config key that differs between runs of one task, model "
            f"pair and loss: {', '.join(_key_label(k) for k in auto_keys)}."
        )
    if summary["supervisors"].astype(bool).any():
        notes.append(
            "Several weak supervisors: acc weak is their combined labels; see supervisors.md."
        )
    return Table(table.name, table.title, table.data, display, notes)


def supervisors_table(summary: pd.DataFrame, group_keys: list[str]) -> Table:
    """Rows trained on several weak supervisors: each member's and the combined test accuracy."""
    keys = [*PAIR_KEYS, *group_keys]
    rows = summary[summary["supervisors"].astype(bool)] if "supervisors" in summary else summary
    cols = [*keys, "n_seeds", "acc_weak", "supervisors"]
    if rows.empty or "supervisors" not in summary:
        empty = pd.DataFrame(columns=cols)
        return Table(
            "supervisors", "Weak supervisors", empty, empty, ["No run with several supervisors."]
        )
    data = rows[cols].reset_index(drop=True)
    display = pd.DataFrame(
        {
            "task": data["task"].astype(str),
            "weak": data["weak_model"].astype(str),
            "strong": data["strong_model"].map(short_model),
            "loss": data["loss"].astype(str),
            **{_key_label(k): data[k].map(fmt) for k in group_keys},
            "seeds": data["n_seeds"].astype(int).astype(str),
            "supervisors (test accuracy)": data["supervisors"],
        }
    )
    notes = [
        "Each supervisor's test accuracy (its weak run) and that of the labels actually trained "
        "on (combined), means over seeds. PGR uses the combined accuracy as acc_weak."
    ]
    return Table("supervisors", "Weak supervisors", data, display, notes)


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
    "≥": r"$\ge$",
    "Δ": r"$\Delta$",
    "√": r"$\surd$",
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
