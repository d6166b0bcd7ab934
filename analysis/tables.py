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
from analysis.tasks import ACROSS_MEAN, ACROSS_MEDIAN, FEW_TASKS, AcrossTasks, LossComparison

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
    rules: list[int] = field(default_factory=list)  # display rows a LaTeX \midrule precedes


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
    if "pgr_nll_mean" in summary and np.isfinite(summary["pgr_nll_mean"]).any():
        columns["PGR (NLL)"] = summary["pgr_nll_mean"].map(fmt)  # generative runs
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
    if "PGR (NLL)" in columns:
        notes.append(
            "Generative runs: acc is exact match; agree compares normalised answers; PGR (NLL): "
            "(nll_weak − nll_w2s)/(nll_weak − nll_ceiling) from the mean reference-token NLL on "
            "test, mean."
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
    flagged = summary["flags"].fillna("").astype(str)
    if flagged.astype(bool).any():
        display["flags"] = flagged.to_numpy()
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
    if flagged.astype(bool).any():
        notes.append(
            "flags: seeds whose run (w2s, or the weak or ceiling run it used) was still "
            "learning (not_converged: fitted loss falling > 5 % over the last 20 % of steps), "
            "taught by near-uniform labels, predicting near-uniformly, or collapsed to one class "
            "(≥ 95 % of test predictions); read those PGRs with care."
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


def _pct(level: float) -> str:
    return f"{100 * level:g}%"


def _setting_label(weak: object, strong: object, name: object) -> str:
    return f"{short_model(weak)} → {short_model(strong)}, {name}"


def _counts_notes(across: pd.DataFrame, name_col: str, what: str) -> list[str]:
    """One line per (weak, strong, loss or comparison): tasks used, seeds per task, left out;
    a single line when every row has the same tasks and seeds."""

    def line(r) -> str:
        text = (
            f"{int(r['n_tasks_used'])} tasks used ({what} per task: {r['seeds_per_task'] or '–'})"
        )
        if r["n_tasks_undefined"]:
            text += f", {int(r['n_tasks_undefined'])} left out (undefined: {r['tasks_undefined']})"
        else:
            text += ", none left out"
        return text

    lines = [line(r) for _, r in across.iterrows()]
    if len(set(lines)) == 1:
        return [f"Every row: {lines[0]}."]
    return [
        f"{_setting_label(r['weak_model'], r['strong_model'], r[name_col])}: {text}."
        for (_, r), text in zip(across.iterrows(), lines, strict=True)
    ]


def _bootstrap_note(n_resamples: int, seed: int, level: float, values: str) -> str:
    return (
        f"Across tasks: mean and median over tasks of the per-task mean {values}, with the "
        f"{_pct(level)} percentile interval of a hierarchical bootstrap ({n_resamples:,} resamples, "
        f"seed {seed}): each resample draws the tasks with replacement, then each drawn task's "
        f"seeds with replacement (its per-seed {values}), and takes the mean and the median over "
        "the drawn tasks of their means. It counts task-to-task and seed-to-seed variation, not "
        "test-example noise within a seed; no interval with fewer than 2 tasks."
    )


def _few_tasks_note(across: pd.DataFrame) -> list[str]:
    used = across["n_tasks_used"]
    if used.empty or used.min() >= FEW_TASKS:
        return []
    return [
        f"Fewer than {FEW_TASKS} tasks: a bootstrap over so few tasks spans about their range and "
        "is likely too narrow; read the across-task interval as descriptive."
    ]


def task_pgr_table(result: AcrossTasks, eps: float = 0.0, gap_se: float = GAP_SE_K) -> Table:
    """PGR per task (rows per weak, strong, loss and task) and a final across-tasks block: the
    mean and median over tasks with their hierarchical bootstrap intervals and task counts."""
    tasks, across = result.tasks, result.across
    if tasks.empty:
        empty = pd.DataFrame(columns=["task"])
        return Table("pgr_tasks", "PGR per task", empty, empty, ["No finished w2s runs."])
    marks = [EXAMPLE_CI if m == "examples" else "" for m in tasks["ci_method"]]
    pgr_col = f"PGR mean [{_pct(result.level)} CI]"
    display = pd.DataFrame(
        {
            "weak": tasks["weak_model"].map(short_model),
            "strong": tasks["strong_model"].map(short_model),
            "loss": tasks["variant"].astype(str),
            "task": tasks["task"].astype(str),
            "seeds": tasks["n_seeds"].astype(int).astype(str),
            "acc weak": tasks["acc_weak"].map(fmt),
            "acc ceiling": tasks["acc_ceiling"].map(fmt),
            "acc w2s": tasks["acc_w2s"].map(fmt),
            pgr_col: _interval_cells(
                tasks["pgr_mean"], tasks["pgr_ci_low"], tasks["pgr_ci_high"], marks
            ),
            "left out": [t or MISSING for t in tasks["left_out"]],
        }
    )
    block = []
    for _, r in across.iterrows():
        left = (
            f"{int(r['n_tasks_undefined'])} undefined: {r['tasks_undefined']}"
            if r["n_tasks_undefined"]
            else MISSING
        )
        for label, stat in ((ACROSS_MEAN, "pgr_mean"), (ACROSS_MEDIAN, "pgr_median")):
            cell = _interval_cells([r[stat]], [r[f"{stat}_low"]], [r[f"{stat}_high"]])[0]
            block.append(
                {
                    "weak": short_model(r["weak_model"]),
                    "strong": short_model(r["strong_model"]),
                    "loss": str(r["variant"]),
                    "task": label,
                    "seeds": f"{int(r['n_tasks_used'])} tasks",
                    "acc weak": MISSING,
                    "acc ceiling": MISSING,
                    "acc w2s": MISSING,
                    pgr_col: cell,
                    "left out": left,
                }
            )
    display = pd.concat([display, pd.DataFrame(block)], ignore_index=True)
    title = (
        "PGR per task and across tasks; per task: mean over seeds with "
        f"{interval_caption(tasks, result.level) or 'no interval'}; across tasks: mean and median "
        f"of the per-task means with a {_pct(result.level)} hierarchical bootstrap interval "
        "(tasks, then seeds within each task)"
    )
    se_rule = f" or < {gap_se:g} SE of the paired test difference" if gap_se > 0 else ""
    ok_rule = f" and ≥ {gap_se:g} SE of the paired test difference" if gap_se > 0 else ""
    notes = [
        f"Per task: PGR = (acc_w2s − acc_weak)/(acc_ceiling − acc_weak) per seed, mean over the "
        f"seeds whose ceiling − weak gap is > {eps:g}{ok_rule} (seeds: how many; left out: the "
        "others and why); acc: means over paired seeds, as in the main table."
        + (f" {EXAMPLE_CI} one seed: bootstrap over its test examples." if any(marks) else ""),
        _bootstrap_note(result.n_resamples, result.seed, result.level, "PGR"),
        *_counts_notes(across, "variant", "seeds"),
        *_few_tasks_note(across),
    ]
    n_undefined = int(across["n_tasks_undefined"].sum())
    if n_undefined:
        notes.append(
            f"undefined: no seed of the task has a defined PGR (gap ≤ {eps:g}{se_rule}, or the "
            f"run is unpaired); {n_undefined} such rows are shown and left out of the across-task "
            "rows."
        )
    else:
        notes.append("Every task has at least one seed with a defined PGR.")
    positive = "; ".join(
        f"{_setting_label(r['weak_model'], r['strong_model'], r['variant'])}: "
        f"{int(r['n_pgr_positive'])}/{int(r['n_tasks_used'])}"
        for _, r in across.iterrows()
    )
    notes.append(f"Tasks with PGR > 0 (w2s beats its weak supervisor): {positive}.")
    keys = result.group_keys
    front = ["row", "weak_model", "strong_model", "variant", "loss", *keys, "task"]
    task_cols = ["n_runs", "n_seeds", "n_flagged", "n_unpaired", "acc_weak", "acc_ceiling",
                 "acc_w2s", "pgr_mean", "pgr_ci_low", "pgr_ci_high", "ci_method", "pgr_median",
                 "left_out", "seed_pgrs"]  # fmt: skip
    across_cols = ["n_tasks", "n_tasks_used", "n_tasks_undefined", "tasks_undefined",
                   "seeds_per_task", "n_pgr_positive", "pgr_mean_low", "pgr_mean_high",
                   "pgr_median_low", "pgr_median_high"]  # fmt: skip
    data = pd.concat(
        [
            tasks.assign(row="task")[[c for c in front + task_cols if c in tasks or c == "row"]],
            across.assign(row="across", task=ACROSS_MEAN.split(":")[0]),
        ],
        ignore_index=True,
    )
    data = data[[c for c in front + task_cols + across_cols if c in data]]
    return Table("pgr_tasks", title, data, display, notes, rules=[len(tasks)])


def loss_compare_table(result: LossComparison) -> Table:
    """Paired PGR differences A − B per task, and per comparison an across-tasks block: mean
    and median with hierarchical bootstrap intervals, and on how many tasks A is ahead."""
    tasks, across = result.tasks, result.across
    if tasks.empty:
        empty = pd.DataFrame(columns=["task"])
        notes = [*result.warnings, "No two losses to compare."]
        return Table("loss_compare", "Paired loss comparison", empty, empty, notes)
    pct = _pct(result.level)
    diff_col = f"Δ mean [{pct} CI]"
    display = pd.DataFrame(
        {
            "weak": tasks["weak_model"].map(short_model),
            "strong": tasks["strong_model"].map(short_model),
            "A − B": tasks["comparison"].astype(str),
            "task": tasks["task"].astype(str),
            "paired seeds": [
                f"{int(k)}/{int(n)}"
                for k, n in zip(tasks["n_pairs"], tasks["n_seeds"], strict=True)
            ],
            "PGR A": tasks["pgr_a"].map(fmt),
            "PGR B": tasks["pgr_b"].map(fmt),
            diff_col: _interval_cells(
                tasks["diff_mean"], tasks["diff_ci_low"], tasks["diff_ci_high"]
            ),
            "excluded": [
                f"undefined: {t or 'no seed'}" if n == 0 else (t or MISSING)
                for n, t in zip(tasks["n_pairs"], tasks["excluded"], strict=True)
            ],
        }
    )
    block = []
    for _, r in across.iterrows():
        n_used = int(r["n_tasks_used"])
        left = (
            f"{int(r['n_tasks_undefined'])} without a paired seed: {r['tasks_undefined']}"
            if r["n_tasks_undefined"]
            else MISSING
        )
        share = f" ({r['share_positive']:.0%})" if n_used else ""
        cells = [
            (
                ACROSS_MEAN,
                _interval_cells([r["diff_mean"]], [r["diff_mean_low"]], [r["diff_mean_high"]])[0],
            ),  # fmt: skip
            (
                ACROSS_MEDIAN,
                _interval_cells(
                    [r["diff_median"]], [r["diff_median_low"]], [r["diff_median_high"]]
                )[0],
            ),  # fmt: skip
            ("tasks with Δ > 0", f"{int(r['n_positive'])}/{n_used}{share}"),
            (
                "tasks whose CI excludes 0",
                f"{int(r['n_ci_positive'])} above, {int(r['n_ci_negative'])} below "
                f"(of {int(r['n_with_ci'])} with ≥ 2 seeds)",
            ),
        ]
        for label, cell in cells:
            block.append(
                {
                    "weak": short_model(r["weak_model"]),
                    "strong": short_model(r["strong_model"]),
                    "A − B": str(r["comparison"]),
                    "task": label,
                    "paired seeds": f"{n_used} tasks",
                    "PGR A": MISSING,
                    "PGR B": MISSING,
                    diff_col: cell,
                    "excluded": left,
                }
            )
    display = pd.concat([display, pd.DataFrame(block)], ignore_index=True)
    title = (
        "Paired loss comparison: Δ = PGR_A − PGR_B per seed, over w2s runs trained against the "
        f"same weak and ceiling runs; per task: mean with a {pct} Student-t interval over the "
        f"paired seeds; across tasks: mean and median of the per-task means with a {pct} "
        "hierarchical bootstrap interval (tasks, then paired seeds within each task)"
    )
    notes = [
        *result.warnings,
        "Pairing: for each seed, A's and B's w2s runs must record the same weak runs and the same "
        "ceiling run (by run id) and both have a defined PGR; excluded seeds are counted by "
        "reason: other weak/ceiling run, tiny gap, unpaired, several runs per seed, only one "
        "loss. PGR A/B: means over the paired seeds.",
        _bootstrap_note(result.n_resamples, result.seed, result.level, "Δ"),
        *_counts_notes(across, "comparison", "paired seeds"),
        *_few_tasks_note(across),
        "Tasks with Δ > 0: A's mean PGR is higher; CI excludes 0: the task's t-interval lies "
        "above (A better) or below (B better) 0.",
    ]
    if across["n_tasks_undefined"].sum():
        notes.append(
            "undefined: no seed pairs on that task; the row is shown and the task left out of "
            "the across-task rows."
        )
    front = ["row", "weak_model", "strong_model", "comparison", "variant_a", "variant_b", "task"]
    data = pd.concat(
        [tasks.assign(row="task"), across.assign(row="across", task=ACROSS_MEAN.split(":")[0])],
        ignore_index=True,
    )
    data = data[[*front, *[c for c in data.columns if c not in front]]]
    return Table("loss_compare", title, data, display, notes, rules=[len(tasks)])


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
    "<": r"$<$",
    ">": r"$>$",
    FLAG: r"\textsuperscript{\dag}",
    EXAMPLE_CI: r"\textsuperscript{\ddag}",
}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(table: Table) -> str:
    d = table.display
    text_cols = {"task", "weak", "strong", "loss", "A − B", "left out", "excluded"}
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
    rules = set(table.rules)
    for i, row in enumerate(d.astype(str).values.tolist()):
        if i in rules:
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(c) for c in row) + r" \\")
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
