"""Bootstrap and Student-t intervals, vectorised in numpy and seeded.

The interval code the producer also prints (Student-t over seeds, the two-level bootstrap, the
tiny-gap rule) lives in ``w2s.stats`` (the ``w2s`` CLI must not import ``analysis``) and is
re-exported here. This module adds what only the tables need: percentile bootstraps of the mean
over seeds for many groups at once, and the single-seed bootstrap over test examples (weak,
ceiling and w2s predictions resampled jointly, so their correlation is kept), and the
hierarchical bootstrap over tasks, then seeds within each task, for statistics across tasks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from w2s.stats import (
    BOOTSTRAP_SEED,
    CI_LEVEL,
    FEW_SEEDS,
    GAP_SE_K,
    N_RESAMPLES,
    PATTERN_CEILING,
    PATTERN_W2S,
    PATTERN_WEAK,
    describe_interval,
    grouped_two_level_bootstrap,
    joint_pattern_counts,
    paired_gap_se,
    paired_gap_se_counts,
    resample_counts,
    t_interval,
    t_quantile,
    tiny_gap,
    two_level_bootstrap,
    two_level_bootstrap_counts,
)

__all__ = [
    "BOOTSTRAP_SEED",
    "CI_LEVEL",
    "FEW_SEEDS",
    "GAP_SE_K",
    "N_RESAMPLES",
    "bootstrap_mean_ci",
    "bootstrap_means",
    "describe_interval",
    "grouped_mean_ci",
    "grouped_hierarchical_bootstrap",
    "grouped_two_level_bootstrap",
    "hierarchical_bootstrap",
    "joint_pattern_counts",
    "paired_gap_se",
    "paired_gap_se_counts",
    "percentile_interval",
    "pgr_example_bootstrap",
    "resample_counts",
    "t_interval",
    "t_quantile",
    "tiny_gap",
    "two_level_bootstrap",
    "two_level_bootstrap_counts",
]

_CHUNK_ELEMENTS = 4_000_000  # rows x resamples per matrix product, bounds memory


def bootstrap_means(
    values: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> np.ndarray:
    """Bootstrap distribution of the mean for each row of ``values`` ``[g, n]`` → ``[g, B]``.

    All rows share one set of resamples (fixed by ``seed``), so a group's interval does not depend
    on which other groups are analysed or in what order.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    g, n = values.shape
    rng = np.random.default_rng(seed)
    counts = resample_counts(n, n_resamples, rng).astype(float) / n
    out = np.empty((g, n_resamples))
    step = max(1, _CHUNK_ELEMENTS // n_resamples)
    for start in range(0, g, step):
        out[start : start + step] = values[start : start + step] @ counts.T
    return out


def percentile_interval(dist: np.ndarray, level: float = CI_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper percentile bounds along the last axis, ignoring NaN resamples."""
    alpha = (1.0 - level) / 2.0
    q = [100 * alpha, 100 * (1 - alpha)]
    # np.nanpercentile loops in Python over rows; the plain version is vectorised
    lo, hi = (np.nanpercentile if np.isnan(dist).any() else np.percentile)(dist, q, axis=-1)
    return lo, hi


def bootstrap_mean_ci(
    values: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean of a 1-D sample (NaNs dropped first).

    Kept for reference and comparison: over fewer than about 10 seeds it covers far less than
    ``level`` (over 3 seeds it is close to their range); tables use ``t_interval`` instead.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float(v[0])
    lo, hi = percentile_interval(bootstrap_means(v[None, :], n_resamples, seed)[0], level)
    return float(lo), float(hi)


def grouped_mean_ci(
    samples: list[np.ndarray],
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """Mean CIs for many groups at once: groups of equal size share one matrix product.

    Returns ``[len(samples), 2]``; NaN for an empty group, a zero-width interval for one value.
    """
    out = np.full((len(samples), 2), np.nan)
    clean = [np.asarray(s, dtype=float)[np.isfinite(np.asarray(s, dtype=float))] for s in samples]
    by_size: dict[int, list[int]] = {}
    for i, s in enumerate(clean):
        by_size.setdefault(s.size, []).append(i)
    for size, members in by_size.items():
        if size == 0:
            continue
        matrix = np.stack([clean[i] for i in members])
        if size == 1:
            out[members] = np.repeat(matrix, 2, axis=1)
            continue
        lo, hi = percentile_interval(bootstrap_means(matrix, n_resamples, seed), level)
        out[members, 0], out[members, 1] = lo, hi
    return out


def pgr_example_bootstrap(
    pattern_counts: np.ndarray,
    eps: float = 0.0,
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """CI of accuracy-PGR from one seed by resampling test examples jointly.

    Resampling n examples with replacement and reading off three accuracies only depends on how
    many drawn examples fall in each joint correctness pattern, which is multinomial over the 8
    observed pattern frequencies; drawing that directly is exact and O(B) instead of O(B·n).
    Resamples whose ceiling–weak gap is ≤ ``eps`` give NaN and are left out; the share of such
    resamples is returned third.
    """
    counts = np.asarray(pattern_counts, dtype=float)
    n = int(counts.sum())
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts / n, size=n_resamples) / n
    acc_weak, acc_ceiling, acc_w2s = (
        draws @ PATTERN_WEAK,
        draws @ PATTERN_CEILING,
        draws @ PATTERN_W2S,
    )
    gap = acc_ceiling - acc_weak
    ok = gap > eps
    pgr = np.full(n_resamples, np.nan)
    pgr[ok] = (acc_w2s[ok] - acc_weak[ok]) / gap[ok]
    if not ok.any():
        return float("nan"), float("nan"), 1.0
    lo, hi = percentile_interval(pgr, level)
    return float(lo), float(hi), float(1.0 - ok.mean())


HIERARCHICAL_METHOD = (
    "hierarchical bootstrap (tasks with replacement, then each drawn task's seeds with "
    "replacement; percentile interval)"
)


def _hierarchical_draws(
    sizes: tuple[int, ...], n_resamples: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Resamples for tasks with ``sizes`` seeds each: per task t, the seed weights (count drawn /
    n_t, ``[m_t, n_t]``) of the m_t slots of ``[B, T]`` that drew it, in task order, and the
    permutation that puts those slots back in resample order.

    The task draws come first from ``default_rng(seed)`` (``integers(0, T, (B, T))``), so with one
    value per task the result is a plain bootstrap over tasks with that generator; then every
    slot draws its task's n_t seeds, draw i as ``floor(u·n_t)``.
    """
    n_tasks, width = len(sizes), max(sizes)
    rng = np.random.default_rng(seed)
    tasks = rng.integers(0, n_tasks, size=(n_resamples, n_tasks)).ravel()
    n = np.asarray(sizes, dtype=np.int64)[tasks][:, None]  # [B·T, 1]
    u = rng.random((len(tasks), width))
    seeds = np.minimum((u * n).astype(np.int64), n - 1)
    seeds = np.where(np.arange(width) < n, seeds, width)  # draws past n_t fall in a spare bin
    order = np.argsort(tasks, kind="stable")
    bounds = np.searchsorted(tasks[order], np.arange(n_tasks + 1))
    weights = []
    for t, n_t in enumerate(sizes):
        picked = seeds[order[bounds[t] : bounds[t + 1]]]  # [m_t, width]
        offsets = (np.arange(len(picked)) * (width + 1))[:, None]
        counts = np.bincount((picked + offsets).ravel(), minlength=len(picked) * (width + 1))
        weights.append(counts.reshape(len(picked), width + 1)[:, :n_t] / n_t)
    return weights, np.argsort(order)


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median along the last (short) axis; sorting beats np.median's partition there."""
    k = x.shape[-1]
    x = np.sort(x, axis=-1)
    return x[..., (k - 1) // 2 : k // 2 + 1].mean(axis=-1)


def grouped_hierarchical_bootstrap(
    groups: Sequence[Sequence[np.ndarray]],
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> list[dict]:
    """Mean and median across tasks of per-task means, with hierarchical bootstrap intervals.

    Each group is a list of tasks, each task an array of its per-seed values (NaN seeds and
    tasks left with none are dropped first: an undefined PGR is not a value). A resample draws
    T tasks with replacement, then for each drawn task its n_t seeds with replacement, takes
    each drawn task's mean and then the mean and the median over the drawn tasks; intervals are
    percentiles of those. Both levels of variation count: which tasks were run, and seed noise
    within a task (test-example noise within a seed does not). Draws depend only on ``seed`` and
    the seeds-per-task shape, so groups of one shape share them and a group's interval does not
    depend on the others. Returns per group: ``mean``, ``median``, ``mean_ci``, ``median_ci``,
    ``n_tasks``, ``n_seeds`` (per task), ``n_resamples``, ``level``, ``method``.
    """
    out, shapes = [], {}
    for pos, tasks in enumerate(groups):
        clean = [np.asarray(t, dtype=float) for t in tasks]
        clean = [t[np.isfinite(t)] for t in clean]
        clean = [t for t in clean if t.size]
        means = np.array([t.mean() for t in clean])
        nan = (float("nan"), float("nan"))
        out.append(
            {
                "mean": float(means.mean()) if means.size else float("nan"),
                "median": float(np.median(means)) if means.size else float("nan"),
                "mean_ci": nan,
                "median_ci": nan,
                "n_tasks": len(clean),
                "n_seeds": [int(t.size) for t in clean],
                "n_resamples": n_resamples,
                "level": level,
                "method": HIERARCHICAL_METHOD,
            }
        )
        if clean:
            shapes.setdefault(tuple(t.size for t in clean), []).append((pos, clean))
    for sizes, members in shapes.items():
        weights, unsort = _hierarchical_draws(sizes, n_resamples, seed)
        n_tasks = len(sizes)
        step = max(1, _CHUNK_ELEMENTS // (n_resamples * n_tasks))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            by_task = np.empty((len(chunk), n_resamples * n_tasks))
            at = 0
            for t, w in enumerate(weights):
                values = np.stack([clean[t] for _, clean in chunk])  # [g, n_t]
                # einsum, not BLAS: with n_t ≈ 5 threads cost more than they save
                by_task[:, at : at + len(w)] = np.einsum("gs,ms->gm", values, w)
                at += len(w)
            task_means = by_task[:, unsort].reshape(len(chunk), n_resamples, n_tasks)
            mean_lo, mean_hi = percentile_interval(task_means.mean(axis=-1), level)
            med_lo, med_hi = percentile_interval(_median_last(task_means), level)
            for g, (pos, _) in enumerate(chunk):
                out[pos]["mean_ci"] = (float(mean_lo[g]), float(mean_hi[g]))
                out[pos]["median_ci"] = (float(med_lo[g]), float(med_hi[g]))
    return out


def hierarchical_bootstrap(
    tasks: Sequence[np.ndarray],
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> dict:
    """`grouped_hierarchical_bootstrap` for one list of tasks (per-seed values per task)."""
    return grouped_hierarchical_bootstrap([tasks], n_resamples, level, seed)[0]
