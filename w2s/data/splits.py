"""Deterministic, disjoint A / B / val / test splits of a task.

The split seed is ``task.split_seed`` when set (the same splits for every run seed), else the
run's seed. Index arrays come back in random order, so taking a prefix of one is still a random
sample.

With ``task.balance`` every split is class-balanced as far as the data allow. Each class first
gets an equal share of all the examples the splits need; a class with fewer examples gives all it
has and the shortfall is shared equally by the classes with examples to spare (so the split sizes
stay exactly as configured). Each class's share is then spread over the splits in proportion to
their sizes, so a short class is equally under-represented in every split. A warning says when
a class was short.
"""

from __future__ import annotations

import logging

import numpy as np

from w2s.config import TaskConfig
from w2s.data.tasks import DataError, TaskData

log = logging.getLogger("w2s.data")

SPLITS = ("a", "b", "val", "test")


def _dropped(data: TaskData) -> str:
    if not data.dropped:
        return ""
    why = "; ".join(f"{n}: {reason}" for reason, n in data.dropped.items())
    return f" ({sum(data.dropped.values())} examples were dropped before splitting: {why})"


def class_totals(available: np.ndarray, need: int) -> np.ndarray:
    """How many examples each class gives: equal shares, capped by what a class has, with the
    remainder spread over the classes that still have examples (the most spare first)."""
    take = np.zeros_like(available)
    left = need
    while left > 0:
        spare = available - take
        open_ = np.flatnonzero(spare > 0)
        share = left // len(open_)
        if share == 0:
            order = open_[np.argsort(-spare[open_], kind="stable")]
            take[order[:left]] += 1
            break
        add = np.minimum(share, spare[open_])
        take[open_] += add
        left -= int(add.sum())
    return take


def spread(totals: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``[split, class]`` counts with row sums ``sizes`` and column sums ``totals``, each row
    proportional to ``totals`` (integer rounding by largest remainder)."""
    out = np.zeros((len(sizes), len(totals)), dtype=np.int64)
    remaining = totals.astype(np.int64).copy()
    left = int(sum(sizes))
    for s, size in enumerate(sizes):
        if s == len(sizes) - 1 or left == 0:
            q = remaining.copy() if s == len(sizes) - 1 else np.zeros_like(remaining)
        else:
            q, frac = np.divmod(remaining * size, left)
            order = np.argsort(-frac, kind="stable")
            q[order[: size - int(q.sum())]] += 1
        out[s] = q
        remaining -= q
        left -= size
    return out


def make_splits(data: TaskData, cfg: TaskConfig, seed: int) -> dict[str, np.ndarray]:
    """Disjoint index arrays ``a``, ``b``, ``val``, ``test`` into ``data`` of sizes
    ``task.n_a``, ``n_b``, ``n_val``, ``n_test``, the same for the same seed."""
    sizes = [int(cfg.n_a), int(cfg.n_b), int(cfg.n_val), int(cfg.n_test)]
    if min(sizes) < 0:
        raise DataError(f"task {data.name!r}: split sizes must not be negative, got {sizes}")
    need, n = sum(sizes), len(data)
    if n == 0:
        raise DataError(f"task {data.name!r} has no examples left to split{_dropped(data)}")
    if n < need:
        names = ("n_a", "n_b", "n_val", "n_test")
        detail = ", ".join(f"{k}={v}" for k, v in zip(names, sizes, strict=True))
        raise DataError(
            f"task {data.name!r}: {n} examples available but the splits need {need} ({detail}); "
            f"lower the task's split sizes{_dropped(data)}"
        )
    rng = np.random.default_rng(cfg.split_seed if cfg.split_seed is not None else seed)
    if not cfg.balance:
        order = rng.permutation(n)[:need]
        bounds = np.cumsum([0, *sizes])
        return {k: order[bounds[i] : bounds[i + 1]] for i, k in enumerate(SPLITS)}

    available = data.class_counts()
    totals = class_totals(available, need)
    short = [i for i in range(data.num_labels) if totals[i] < need // data.num_labels]
    counts = spread(totals, sizes)
    if short:
        names = ", ".join(f"{data.label_names[i]!r} ({available[i]})" for i in short)
        per_split = "; ".join(f"{k}: {counts[s].tolist()}" for s, k in enumerate(SPLITS))
        log.warning(
            "task %s: too few examples of class %s for balanced splits of %d; "
            "examples per class and split: %s",
            data.name,
            names,
            need,
            per_split,
        )
    pools = [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(data.num_labels)]
    starts = np.zeros(data.num_labels, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for s, key in enumerate(SPLITS):
        parts = []
        for c in range(data.num_labels):
            parts.append(pools[c][starts[c] : starts[c] + counts[s, c]])
            starts[c] += counts[s, c]
        out[key] = rng.permutation(np.concatenate(parts)).astype(np.int64)
    return out
