"""Paper figures, one column wide (3.3 × 2.5 in), saved as PNG (200 dpi) and PDF.

Figures are built on `matplotlib.figure.Figure` objects (no pyplot state, no GUI backend), so
plotting works headless and in threads. Every figure copes with one strong model and one seed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.tables import short_model

FIGSIZE = (3.3, 2.5)
DPI = 200
STYLE = {
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "pdf.fonttype": 42,
}


def slug(*parts: object) -> str:
    """File-name-safe join of model/task names (``Qwen/Qwen2.5-0.5B`` → ``Qwen_Qwen2.5-0.5B``)."""
    return "__".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", str(p)).strip("_") for p in parts)


@contextmanager
def _figure() -> Iterator[Figure]:
    with mpl.rc_context(STYLE):
        yield Figure(figsize=FIGSIZE, layout="constrained")


def _save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with mpl.rc_context(STYLE):
        fig.savefig(paths[0], dpi=DPI)
        fig.savefig(paths[1])
    return paths


def params_label(n: float) -> str:
    """124000000 → ``124M``, 1.5e9 → ``1.5B``: tick labels that read as model sizes."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def _size_axis(ax, sizes: np.ndarray, label: str) -> None:
    """Log-scale parameter axis with a tick at each model size, labelled as 124M, 1.5B, …"""
    sizes = np.unique(np.asarray(sizes, dtype=float)[np.isfinite(sizes)])
    ax.set_xscale("log")
    ax.set_xlabel(label)
    if sizes.size:
        ax.set_xlim(sizes.min() / 1.4, sizes.max() * 1.4)  # room for markers, also with one size
        ax.set_xticks(sizes, [params_label(x) for x in sizes])
        ax.xaxis.set_minor_locator(mpl.ticker.NullLocator())
        span = np.log10(ax.get_xlim()[1] / ax.get_xlim()[0])
        if sizes.size > 1 and np.diff(np.log10(sizes)).min() < 0.12 * span:  # labels would touch
            ax.tick_params(axis="x", labelrotation=40)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")


def _legend(fig: Figure, ax, title: str | None = None) -> None:
    """Inside the axes for a few entries; below them, in columns, when it would cover data."""
    handles, labels = ax.get_legend_handles_labels()
    if len(labels) <= 3:
        ax.legend(loc="best", title=title)
        return
    ncol = 3 if max(len(lb) for lb in labels) <= 14 else 2
    rows = -(-len(labels) // ncol)
    fig.set_size_inches(FIGSIZE[0], FIGSIZE[1] + 0.14 * rows + (0.14 if title else 0.0))
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, title=title)


def _colors(n: int) -> list:
    """Ordered colours (viridis) for model sizes."""
    cmap = mpl.colormaps["viridis"]
    return [cmap(v) for v in (np.linspace(0.05, 0.8, n) if n > 1 else [0.35])]


MARKERS = "osD^vP*Xh<>p"


def _categorical(n: int) -> list[tuple]:
    """Distinct colour and marker pairs for unordered categories (losses)."""
    cmap = mpl.colormaps["tab10"]
    return [(cmap(i % 10), MARKERS[i % len(MARKERS)]) for i in range(n)]


def _variant(keys: list[str], values: tuple) -> str:
    """``train.lr=0.0001`` for the user's group-by keys, to tell series and files apart."""
    return ", ".join(f"{k.removeprefix('config.')}={v:g}" if isinstance(v, float) else f"{k.removeprefix('config.')}={v}"
                     for k, v in zip(keys, values, strict=True))  # fmt: skip


def plot_accuracy_vs_size(
    summary: pd.DataFrame, out_dir: Path, group_keys: list[str] | None = None
) -> list[Path]:
    """Per (task, loss[, group keys]): test accuracy vs model size, a line per weak model that
    starts at the weak model alone and runs through its w2s students, and the ceiling line."""
    paths: list[Path] = []
    keys = list(group_keys or [])
    data = summary.dropna(subset=["strong_params"]) if not summary.empty else summary
    if data.empty:
        return paths
    for (task, loss, *values), g in data.groupby(["task", "loss", *keys], sort=True, dropna=False):
        with _figure() as fig:
            ax = fig.add_subplot()
            weak_models = g.groupby("weak_model")["weak_params"].median().sort_values().index
            for color, weak in zip(_colors(len(weak_models)), weak_models, strict=True):
                w = g[g["weak_model"] == weak]
                by_size = w.groupby("strong_params", sort=True)["acc_w2s"].mean()
                x, y = list(by_size.index), list(by_size.to_numpy())
                weak_size = w["weak_params"].median()
                if np.isfinite(weak_size):
                    x, y = [weak_size, *x], [w["acc_weak"].mean(), *y]
                    ax.plot(x[:1], y[:1], marker="s", color=color, linestyle="none")
                ax.plot(x, y, marker="o", color=color, label=f"w2s, weak = {short_model(weak)}")
            ceiling = g.groupby("strong_params", sort=True)["acc_ceiling"].mean()
            ax.plot(ceiling.index, ceiling.to_numpy(), color="black", marker="^", linestyle="--",
                    label="ceiling (strong on GT)")  # fmt: skip
            sizes = np.concatenate(
                [g["strong_params"].to_numpy(float), g["weak_params"].to_numpy(float)]
            )
            _size_axis(ax, sizes, "model parameters (■ = weak model alone)")
            ax.set_ylabel("test accuracy (mean over seeds)")
            variant = _variant(keys, tuple(values))
            ax.set_title(f"{task} · loss {loss}" + (f" · {variant}" if variant else ""))
            _legend(fig, ax)
            paths += _save(fig, out_dir, slug("accuracy_vs_size", task, loss, *values))
    return paths


def plot_pgr_vs_size(
    summary: pd.DataFrame, out_dir: Path, group_keys: list[str] | None = None
) -> list[Path]:
    """Per (task, weak model): PGR vs strong size, a line per loss (and group-key values) with
    95 % CI error bars, dodged sideways so the bars stay apart."""
    paths: list[Path] = []
    keys = list(group_keys or [])
    data = summary.dropna(subset=["strong_params"]) if not summary.empty else summary
    if data.empty:
        return paths
    for (task, weak), g in data.groupby(["task", "weak_model"], sort=True):
        with _figure() as fig:
            ax = fig.add_subplot()
            series = list(g.groupby(["loss", *keys], sort=True, dropna=False))
            sizes = g["strong_params"].to_numpy(float)
            dodge = 0.03 * max(np.log10(sizes.max() / sizes.min()), 0.5)  # in decades
            offsets = np.linspace(-dodge, dodge, len(series)) if len(series) > 1 else [0.0]
            styles = _categorical(len(series))
            for ((loss, *values), sg), (color, marker), off in zip(
                series, styles, offsets, strict=True
            ):
                sg = sg.sort_values("strong_params")
                y = sg["pgr_mean"].to_numpy()
                err = np.vstack([y - sg["pgr_ci_low"].to_numpy(), sg["pgr_ci_high"].to_numpy() - y])
                err = np.clip(np.nan_to_num(err, nan=0.0), 0.0, None)
                label = ", ".join(filter(None, [str(loss), _variant(keys, tuple(values))]))
                ax.errorbar(sg["strong_params"].to_numpy(float) * 10**off, y, yerr=err, marker=marker,
                            color=color, capsize=2, elinewidth=0.8, label=label)  # fmt: skip
            ax.axhline(0.0, color="grey", linewidth=0.6, linestyle=":")
            ax.axhline(1.0, color="grey", linewidth=0.6, linestyle=":")
            _size_axis(ax, sizes, "strong model parameters")
            single = (g["ci_method"] == "examples").all()
            ax.set_ylabel("PGR (1 seed, 95% CI over examples)" if single else "PGR (mean, 95% CI)")
            ax.set_title(f"{task} · weak = {short_model(weak)}")
            _legend(fig, ax, title="loss")
            paths += _save(fig, out_dir, slug("pgr_vs_size", task, weak))
    return paths


def plot_deferral_curves(curves: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per (task, weak, strong): cascade accuracy vs share deferred, with random and oracle."""
    paths: list[Path] = []
    if curves.empty:
        return paths
    for (task, weak, strong), g in curves.groupby(
        ["task", "weak_model", "strong_model"], sort=True
    ):
        with _figure() as fig:
            ax = fig.add_subplot()
            ax.plot(g["share"], g["oracle"], color="black", linestyle=":", label="oracle deferral")
            ax.plot(g["share"], g["cascade"], color="C0", label="defer least confident")
            ax.plot(g["share"], g["random"], color="grey", linestyle="--", label="random deferral")
            ax.set_xlim(0, 1)
            ax.set_xlabel("share of examples deferred to the strong model")
            ax.set_ylabel("test accuracy")
            n = int(g["n_seeds"].iloc[0])
            ax.set_title(
                f"{task} · {short_model(weak)} → {short_model(strong)} ({n} seed{'s' * (n != 1)})"
            )
            ax.legend(loc="lower right")
            paths += _save(fig, out_dir, slug("deferral", task, weak, strong))
    return paths


def plot_reliability(reliability: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per (task, weak model): accuracy per confidence bin against the diagonal, seeds pooled
    (the ECE in the title is the pooled one; the calibration table averages per-seed ECEs)."""
    paths: list[Path] = []
    if reliability.empty:
        return paths
    for (task, weak), g in reliability.groupby(["task", "weak_model"], sort=True):
        with _figure() as fig:
            ax = fig.add_subplot()
            full = g[g["count"] > 0]
            ax.bar(
                full["bin_lower"],
                full["accuracy"],
                width=(full["bin_upper"] - full["bin_lower"]).to_numpy(),
                align="edge",
                color="C0",
                alpha=0.75,
                edgecolor="white",
                linewidth=0.5,
                label="accuracy in bin",
            )
            ax.plot(
                full["confidence"],
                full["accuracy"],
                "o",
                color="C1",
                markersize=2.5,
                label="(mean confidence, accuracy)",
            )
            ax.plot(
                [0, 1],
                [0, 1],
                color="black",
                linestyle="--",
                linewidth=0.8,
                label="perfect calibration",
            )
            lo = max(0.0, float(np.floor(g.loc[g["count"] > 0, "bin_lower"].min() * 10) / 10))
            ax.set_xlim(lo, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("weak model confidence (max probability)")
            ax.set_ylabel("accuracy")
            pooled_ece = (full["count"] * (full["accuracy"] - full["confidence"]).abs()).sum()
            ece_text = f", ECE {pooled_ece / full['count'].sum():.3f}"
            n = int(g["n_seeds"].iloc[0])
            ax.set_title(
                f"{task} · {short_model(weak)} ({'1 seed' if n == 1 else f'{n} seeds pooled'}{ece_text})"
            )
            ax.legend(loc="upper left")
            paths += _save(fig, out_dir, slug("reliability", task, weak))
    return paths


def _rows_height(n_rows: int, per_row: float) -> float:
    """Figure height for a dot plot with one row per task: 2.5 in, or more for many rows."""
    return max(FIGSIZE[1], 1.0 + per_row * n_rows)


def plot_pgr_tasks(result, out_dir: Path) -> list[Path]:
    """Per (weak, strong): PGR per task (mean over seeds, its interval) sorted by PGR, a marker
    per loss, and below them the mean and median across tasks with their hierarchical bootstrap
    intervals; tasks with undefined PGR are listed, marked "undefined", and not in the mean.
    ``result``: `analysis.tasks.AcrossTasks`."""
    paths: list[Path] = []
    tasks, across = result.tasks, result.across
    if tasks.empty:
        return paths
    for (weak, strong), g in tasks.groupby(["weak_model", "strong_model"], sort=True):
        variants = sorted(g["variant"].unique())
        score = g[g["defined"]].groupby("task")["pgr_mean"].mean().sort_values(ascending=False)
        names = [*score.index, *sorted(set(g["task"]) - set(score.index))]
        rows = [*names, None, "mean", "median"]  # None: a gap before the across-task rows
        y = {name: -i for i, name in enumerate(rows)}
        a = across[(across["weak_model"] == weak) & (across["strong_model"] == strong)]
        dodge = np.linspace(-0.25, 0.25, len(variants)) if len(variants) > 1 else [0.0]
        with _figure() as fig:
            fig.set_size_inches(FIGSIZE[0], _rows_height(len(rows), 0.13 + 0.04 * len(variants)))
            ax = fig.add_subplot()
            side = mpl.transforms.blended_transform_factory(ax.transAxes, ax.transData)
            for variant, (color, marker), off in zip(variants, _categorical(len(variants)), dodge, strict=True):  # fmt: skip
                v = g[g["variant"] == variant].set_index("task")
                ok = v[v["defined"]]
                x = ok["pgr_mean"].to_numpy(float)
                err = np.vstack([x - ok["pgr_ci_low"].to_numpy(float), ok["pgr_ci_high"].to_numpy(float) - x])  # fmt: skip
                ys = np.array([y[t] for t in ok.index], dtype=float) - off
                ax.errorbar(x, ys, xerr=np.clip(np.nan_to_num(err), 0, None), marker=marker,
                            color=color, linestyle="none", capsize=1.5, elinewidth=0.8,
                            label=variant)  # fmt: skip
                for t in v.index[~v["defined"].to_numpy(bool)]:
                    ax.text(0.01, y[t] - off, "undefined", transform=side, color=color,
                            fontsize=5.5, va="center")  # fmt: skip
                r = a[a["variant"] == variant]
                for name, stat in (("mean", "pgr_mean"), ("median", "pgr_median")):
                    if r.empty or not np.isfinite(r[stat].iloc[0]):
                        continue
                    m, lo, hi = (float(r[c].iloc[0]) for c in (stat, f"{stat}_low", f"{stat}_high"))
                    e = np.clip(np.nan_to_num([[m - lo], [hi - m]]), 0, None)
                    ax.errorbar([m], [y[name] - off], xerr=e, marker=marker, color=color,
                                markerfacecolor="white", linestyle="none", capsize=1.5,
                                elinewidth=1.0)  # fmt: skip
            for ref in (0.0, 1.0):
                ax.axvline(ref, color="grey", linewidth=0.6, linestyle=":")
            ax.axhline(y[None], color="grey", linewidth=0.5)
            n_used = int(a["n_tasks_used"].max()) if not a.empty else 0
            labels = {"mean": f"mean ({n_used} tasks)", "median": "median", None: ""}
            ticks = [t for t in rows if t is not None]
            ax.set_yticks([y[t] for t in ticks], [labels.get(t, str(t)) for t in ticks])
            ax.set_ylim(-len(rows) + 0.4, 0.6)
            ax.set_xlabel(
                "PGR; tasks: mean, 95% CI (t over seeds)\nmean/median: 95% hierarchical bootstrap"
            )
            n_undefined = len(names) - len(score)
            undefined = f", {n_undefined} undefined" if n_undefined else ""
            ax.set_title(f"{short_model(weak)} → {short_model(strong)}: PGR on {len(names)} tasks{undefined}")  # fmt: skip
            if len(variants) > 1:
                _legend(fig, ax, title="loss")
            paths += _save(fig, out_dir, slug("pgr_tasks", weak, strong))
    return paths


def plot_loss_compare(result, out_dir: Path) -> list[Path]:
    """Per (weak, strong): a row per loss comparison A − B: each task's mean paired PGR
    difference (dots), the mean (●) and median (◆) across tasks with their hierarchical
    bootstrap intervals, and on how many tasks A is ahead. ``result``:
    `analysis.tasks.LossComparison`."""
    paths: list[Path] = []
    tasks, across = result.tasks, result.across
    if tasks.empty:
        return paths
    for (weak, strong), a in across.groupby(["weak_model", "strong_model"], sort=True):
        t = tasks[(tasks["weak_model"] == weak) & (tasks["strong_model"] == strong)]
        comparisons = list(a["comparison"])
        with _figure() as fig:
            fig.set_size_inches(FIGSIZE[0], _rows_height(len(comparisons), 0.3))
            ax = fig.add_subplot()
            labels = []
            for i, (_, r) in enumerate(a.iterrows()):
                y = -i
                rows = t[(t["comparison"] == r["comparison"]) & t["defined"]]
                d = rows["diff_mean"].to_numpy(float)
                jitter = np.linspace(-0.08, 0.08, len(d)) if len(d) > 1 else np.zeros(len(d))
                ax.plot(d, y + 0.2 + jitter, "o", color="grey", markerfacecolor="none",
                        markersize=2.5, label="task" if i == 0 else None)  # fmt: skip
                for stat, marker, dy, label in (("diff_mean", "o", 0.0, "mean"), ("diff_median", "D", -0.2, "median")):  # fmt: skip
                    m, lo, hi = (float(r[c]) for c in (stat, f"{stat}_low", f"{stat}_high"))
                    if not np.isfinite(m):
                        continue
                    e = np.clip(np.nan_to_num([[m - lo], [hi - m]]), 0, None)
                    ax.errorbar([m], [y + dy], xerr=e, marker=marker, color="C0" if stat == "diff_mean" else "C1",
                                linestyle="none", capsize=1.5, elinewidth=1.0,
                                label=label if i == 0 else None)  # fmt: skip
                labels.append(f"{r['comparison']}\nΔ > 0 on {int(r['n_positive'])}/{int(r['n_tasks_used'])} tasks")  # fmt: skip
            ax.axvline(0.0, color="grey", linewidth=0.6, linestyle=":")
            ax.set_yticks([-i for i in range(len(comparisons))], labels)
            ax.set_ylim(-len(comparisons) + 0.5, 0.5)
            ax.set_xlabel("Δ PGR = A − B, paired by weak and ceiling run\n"
                          "mean/median: 95% hierarchical bootstrap")  # fmt: skip
            n_tasks, n_used = int(a["n_tasks"].max()), int(a["n_tasks_used"].max())
            unpaired = f" of {n_tasks}" if n_used < n_tasks else ""
            ax.set_title(
                f"{short_model(weak)} → {short_model(strong)}: Δ on {n_used}{unpaired} tasks"
            )
            ax.legend(loc="best", fontsize=6)
            paths += _save(fig, out_dir, slug("loss_compare", weak, strong))
    return paths
