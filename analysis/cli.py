"""``w2s-analyze RESULTS_DIR``: read every run below a results directory and write the PGR,
cascade and calibration tables (Markdown, LaTeX, CSV), the plots (PNG, PDF) and ``skipped.md``;
with runs on two or more tasks also the per-task and across-task PGR and the paired loss
comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from analysis.cascade_runs import budgets_from_args, run_cascades
from analysis.pgr import (
    add_group_columns,
    add_prediction_metrics,
    aggregate_pgr,
    flag_tiny_gaps,
    pair_runs,
    varying_config_keys,
)
from analysis.predictions import PredictionStore
from analysis.runs import load_runs, resolve_group_keys
from analysis.screen import gap_pairs, screen, screen_table
from analysis.stats import BOOTSTRAP_SEED, GAP_SE_K, N_RESAMPLES
from analysis.tables import (
    annotate_main_table,
    burns_table,
    calibration_table,
    cascade_table,
    loss_compare_table,
    main_table,
    render_markdown,
    supervisors_table,
    task_pgr_table,
    write_table,
)
from analysis.tasks import MIN_TASKS, compare_losses, task_statistics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2s-analyze",
        description="PGR, cascade and calibration tables and plots for a w2s results directory.",
    )
    p.add_argument(
        "results_dir", type=Path, help="directory with run directories anywhere below it"
    )
    p.add_argument("--out", type=Path, help="output directory (default: RESULTS_DIR/analysis)")
    p.add_argument(
        "--group-by",
        nargs="+",
        default=[],
        metavar="KEY",
        help="extra config keys to split groups by, e.g. train.lr loss.temperature (keys that "
        "vary between runs of one task, model pair and loss split groups anyway)",
    )
    p.add_argument(
        "--ignore-key",
        nargs="+",
        default=[],
        metavar="KEY",
        help="config keys that must not split groups even when they vary between runs",
    )
    p.add_argument("--cost-weak", type=float, help="cost of one weak call (default: weak params)")
    p.add_argument(
        "--cost-strong", type=float, help="cost of one strong call (default: strong params)"
    )
    p.add_argument(
        "--budget-share",
        type=float,
        nargs="+",
        default=[0.5],
        metavar="F",
        help="cascade budgets as c_weak + F·c_strong per example (default: 0.5)",
    )
    p.add_argument(
        "--budget",
        type=float,
        nargs="+",
        default=[],
        metavar="B",
        help="absolute cost budgets per example",
    )
    p.add_argument(
        "--gap-eps",
        type=float,
        default=0.0,
        help="PGR is undefined (flagged) when acc_ceiling − acc_weak ≤ this (default: 0)",
    )
    p.add_argument(
        "--gap-se",
        type=float,
        default=GAP_SE_K,
        metavar="K",
        help="flag seeds whose acc_ceiling − acc_weak is below K standard errors of the paired "
        "test difference, and leave their PGR out of the aggregates (default: 2; 0: off)",
    )
    p.add_argument(
        "--n-resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples (default: 10000)"
    )
    p.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed (default: 0)")
    p.add_argument(
        "--ece-bins", type=int, default=15, help="equal-width bins for ECE (default: 15)"
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        help="loss comparison table: only PGR_A − PGR_B (default: every pair of losses)",
    )
    p.add_argument("--no-plots", action="store_true", help="write tables only")
    p.add_argument("--quiet", action="store_true", help="do not print the main table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    out = args.out or args.results_dir / "analysis"
    try:
        runs, report = load_runs(args.results_dir)
        group_keys = resolve_group_keys(runs, args.group_by)
        auto_keys = [k for k in varying_config_keys(runs, args.ignore_key) if k not in group_keys]
        group_keys += auto_keys
    except (FileNotFoundError, KeyError) as e:
        print(f"w2s-analyze: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)

    pairs = pair_runs(runs, group_keys, eps=args.gap_eps)
    store = PredictionStore()
    report.warnings += add_prediction_metrics(pairs, store)
    flag_tiny_gaps(pairs, k=args.gap_se, eps=args.gap_eps)
    summary = aggregate_pgr(
        pairs, group_keys, eps=args.gap_eps, n_resamples=args.n_resamples, seed=args.seed
    )
    summary = add_group_columns(summary, pairs, group_keys)
    budgets = budgets_from_args(args.budget_share, args.budget)
    cascades = run_cascades(
        pairs,
        store,
        args.cost_weak,
        args.cost_strong,
        budgets,
        eps=args.gap_eps,
        n_bins=args.ece_bins,
    )
    report.warnings += cascades.warnings
    report.warnings += [
        f"unreadable predictions {d}: {e}" for d, e in sorted(store.errors().items())
    ]

    screened = screen(gap_pairs(runs, store, k=args.gap_se, eps=args.gap_eps))
    screen_tab = screen_table(screened, args.gap_se)
    main = main_table(summary, group_keys, args.gap_eps, args.n_resamples, args.gap_se)
    main = annotate_main_table(main, summary, auto_keys)
    tables = [
        main,
        supervisors_table(summary, group_keys),
        burns_table(pairs),
        cascade_table(cascades.table),
        calibration_table(cascades.calibration),
        screen_tab,
    ]
    # across tasks: written whenever the runs cover two or more tasks
    n_tasks = pairs["task"].nunique() if not pairs.empty else 0
    across = comparison = None
    if n_tasks >= MIN_TASKS:
        across = task_statistics(summary, pairs, group_keys, args.n_resamples, args.seed)
        comparison = compare_losses(pairs, group_keys, args.compare, args.n_resamples, args.seed)
        report.warnings += comparison.warnings
        tables += [
            task_pgr_table(across, args.gap_eps, args.gap_se),
            loss_compare_table(comparison),
        ]
    else:
        print(
            f"w2s-analyze: runs cover {n_tasks} task(s); pgr_tasks and loss_compare (statistics "
            f"across tasks) need at least {MIN_TASKS}, skipped",
            file=sys.stderr,
        )
    for table in tables:
        write_table(table, out)
    if not pairs.empty:
        pairs.drop(columns=["pattern_counts"]).to_csv(out / "pgr_runs.csv", index=False)
    cascades.units.to_csv(out / "cascade_runs.csv", index=False)
    cascades.budgets.to_csv(out / "cascade_budgets.csv", index=False)
    cascades.curves.to_csv(out / "deferral_curves.csv", index=False)
    cascades.reliability.to_csv(out / "reliability.csv", index=False)
    (out / "skipped.md").write_text(report.to_markdown())

    n_plots = 0
    if not args.no_plots:
        from analysis import plots  # matplotlib import is slow; tables-only runs skip it

        plot_dir = out / "plots"
        n_plots += len(plots.plot_accuracy_vs_size(summary, plot_dir, group_keys))
        n_plots += len(plots.plot_pgr_vs_size(summary, plot_dir, group_keys))
        n_plots += len(plots.plot_deferral_curves(cascades.curves, plot_dir))
        n_plots += len(plots.plot_reliability(cascades.reliability, plot_dir))
        if across is not None:
            n_plots += len(plots.plot_pgr_tasks(across, plot_dir))
            n_plots += len(plots.plot_loss_compare(comparison, plot_dir))

    if not args.quiet:
        # a screening (weak and ceiling runs only) has no PGR table: show its gaps instead
        print(render_markdown(main if not pairs.empty or screened.empty else screen_tab))
    print(
        f"w2s-analyze: {report.n_loaded} runs loaded, {len(report.skipped)} skipped "
        f"(see {out / 'skipped.md'}), {len(pairs)} w2s runs, {len(summary)} groups, "
        f"{len(cascades.units)} cascade pairs, {n_plots} plot files → {out} "
        f"in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
