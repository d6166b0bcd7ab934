"""Honest intervals for PGR and accuracies over a few seeds (numpy only, no scipy, no JAX).

The producer (``w2s`` CLI) prints these and must not import ``analysis``, so they live here and
``analysis.stats`` builds on them.

- Student-t interval of the mean over seeds: a percentile bootstrap over 3 values is just their
  range and covers about 77 % of the time, where the t-interval keeps its 95 %.
- Two-level bootstrap: seeds with replacement, then each drawn seed's test examples with
  replacement (weak, ceiling and w2s jointly), so both seed-to-seed and test-set noise count.
- Tiny-gap rule: a ceiling − weak gap within 2 standard errors of the paired test difference
  makes PGR a ratio of noise, so such seeds are flagged and left out of the PGR mean.

Joint correctness patterns of one test example use the bit order 4·weak + 2·ceiling + w2s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

CI_LEVEL = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
GAP_SE_K = 2.0
FEW_SEEDS = 5  # below this many seeds an interval over seeds is flagged in its label
_BANK_ELEMENTS = 8_000_000  # cap on one bank of cumulative resample counts (int32)

PATTERN_WEAK = np.array([(i >> 2) & 1 for i in range(8)], dtype=float)
PATTERN_CEILING = np.array([(i >> 1) & 1 for i in range(8)], dtype=float)
PATTERN_W2S = np.array([i & 1 for i in range(8)], dtype=float)


# --- Student-t quantile ------------------------------------------------------------------------


def _beta_cf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((a - 1.0 + m2) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1.0 + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), the CDF of Beta(a, b) at x."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _beta_cf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_cf(b, a, 1.0 - x) / b


def t_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom, t ≥ 0 (accurate in the tail)."""
    return 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))


@lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on the tail probability; cached)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    q = min(p, 1.0 - p)  # upper-tail probability of |quantile|
    lo, hi = 0.0, 1.0
    while t_tail(hi, df) > q:
        lo, hi = hi, 2.0 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_tail(mid, df) > q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    t = 0.5 * (lo + hi)
    return t if p > 0.5 else -t


def t_interval(
    values: Sequence[float] | np.ndarray, level: float = CI_LEVEL
) -> tuple[float, float]:
    """Student-t interval of the mean: mean ± t_{(1+level)/2, n−1}·sd/√n (NaNs dropped).

    Exact for normal per-seed values at any n; with n < 2 there is no spread to use: (NaN, NaN).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan"), float("nan")
    half = t_quantile((1.0 + level) / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    m = float(v.mean())
    return m - half, m + half


# --- the ceiling − weak gap and its noise -------------------------------------------------------


def joint_pattern_counts(
    weak_correct: np.ndarray, ceiling_correct: np.ndarray, w2s_correct: np.ndarray
) -> np.ndarray:
    """Counts of the 8 joint correctness patterns of the same test examples."""
    code = 4 * np.asarray(weak_correct, int) + 2 * np.asarray(ceiling_correct, int)
    code = code + np.asarray(w2s_correct, int)
    return np.bincount(code, minlength=8)


def paired_gap_se(weak_correct: np.ndarray, ceiling_correct: np.ndarray) -> float:
    """Standard error of acc_ceiling − acc_weak on the same examples: sd(c_i − w_i)/√n.

    Paired, so the examples both models find easy or hard cancel out; NaN with fewer than 2.
    """
    d = np.asarray(ceiling_correct, dtype=float) - np.asarray(weak_correct, dtype=float)
    if d.size < 2:
        return float("nan")
    return float(d.std(ddof=1) / math.sqrt(d.size))


def paired_gap_se_counts(pattern_counts: np.ndarray) -> float:
    """``paired_gap_se`` from the 8 joint pattern counts (c_i − w_i is +1, −1 or 0 per example)."""
    counts = np.asarray(pattern_counts, dtype=float)
    n = counts.sum()
    if n < 2:
        return float("nan")
    up = counts[2] + counts[3]  # ceiling right, weak wrong
    down = counts[4] + counts[5]  # weak right, ceiling wrong
    mean = (up - down) / n
    var = max(0.0, (up + down - n * mean * mean) / (n - 1))
    return float(math.sqrt(var / n))


def tiny_gap(gap: float, se: float, k: float = GAP_SE_K, eps: float = 0.0) -> bool:
    """Whether a seed's ceiling − weak gap is too small for PGR: gap ≤ eps or gap < k·SE.

    A NaN gap (a missing partner) counts as tiny; a NaN SE only applies the eps rule.
    """
    if not np.isfinite(gap) or gap <= eps:
        return True
    return bool(np.isfinite(se) and gap < k * se)


# --- labels -------------------------------------------------------------------------------------


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def describe_interval(
    method: str,
    n: int,
    level: float = CI_LEVEL,
    interval: tuple[float, float] | None = None,
    digits: int = 3,
) -> str:
    """Label text for an interval, saying what was resampled, over how many seeds, and the caveat.

    ``method``: "t" (Student-t over seeds), "two-level" (bootstrap: seeds, then test examples),
    "examples" (bootstrap over one seed's test examples), "seeds" (percentile bootstrap over
    seeds) or "none". With fewer than ``FEW_SEEDS`` seeds the text says why the interval is wide
    (t) or why it is likely too narrow (bootstraps over seeds).
    """
    pct = f"{100 * level:g}%"
    bounds = ""
    if interval is not None:
        lo, hi = interval
        bounds = f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    few = n < FEW_SEEDS
    if method == "t":
        text = f"{pct} Student-t interval{bounds} over {_seeds(n)}"
        return text + (f" (wide: fewer than {FEW_SEEDS} seeds)" if few else "")
    if method == "two-level":
        text = f"{pct} two-level bootstrap interval{bounds} (seeds, then test examples) over {_seeds(n)}"
        return text + (f" (fewer than {FEW_SEEDS} seeds: likely too narrow)" if few else "")
    if method == "examples":
        return (
            f"{pct} bootstrap interval{bounds} over test examples of 1 seed "
            "(seed-to-seed variation not included)"
        )
    if method == "seeds":
        text = f"{pct} percentile bootstrap interval{bounds} over {_seeds(n)}"
        return text + (
            f" (fewer than {FEW_SEEDS} seeds: too narrow, near the range)" if few else ""
        )
    if method == "none":
        return f"no interval ({_seeds(n)}: need at least 2)"
    raise ValueError(f"interval method '{method}' unknown; use t, two-level, examples, seeds, none")


# --- two-level bootstrap ------------------------------------------------------------------------


def resample_counts(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` items is drawn, per resample: ``[n_resamples, n]``."""
    idx = rng.integers(0, n, size=(n_resamples, n))
    offsets = (np.arange(n_resamples) * n)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)


def _example_bank(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """Cumulative counts of resamples of n examples, column-major: ``[n + 1, rows]`` int32.

    Entry (e, r): how many of the n draws of resample r fell on examples 0..e−1. With a seed's
    examples sorted by correctness pattern, a pattern's resampled count is the difference at its
    block's two ends, which is exactly the multinomial draw of the pattern counts. One bank serves
    every seed and group with n test examples; a seed reads 7 contiguous rows of it. It has
    min(n_resamples, 8e6 / (n + 1)) resamples, so memory stays under 32 MB for any test set.
    """
    rows = int(min(n_resamples, max(1, _BANK_ELEMENTS // (n + 1))))
    rng = np.random.default_rng([seed, 2, n])
    bank = np.zeros((n + 1, rows), dtype=np.int32)
    step = max(1, 1_000_000 // max(n, 1))
    for start in range(0, rows, step):
        counts = resample_counts(n, min(step, rows - start), rng)
        bank[1:, start : start + len(counts)] = np.cumsum(counts, axis=1).T
    return bank


def _seed_values(
    counts: np.ndarray, bank: np.ndarray, keep: np.ndarray, eps: float, accuracies: bool = True
) -> np.ndarray:
    """Every seed under every bank row: ``[k, G, S, rows]`` = PGR (0 where it does not count),
    1/0 for whether it counts (gap > eps and the seed kept), then (``accuracies``) accuracies
    weak, ceiling, w2s. ``counts`` ``[G, S, 8]``: seeds of n test examples each (the bank's n).
    """
    n = bank.shape[0] - 1
    ends = np.moveaxis(np.cumsum(counts, axis=-1)[..., :7], -1, 0)
    g = bank[ends]  # [7, G, S, rows] int32: cumulative counts at the ends of patterns 0..6
    weak = n - g[3]  # patterns 4-7
    ceiling = g[3] - g[1] + (n - g[5])  # patterns 2, 3, 6, 7
    w2s = (g[1] - g[0]) + (g[3] - g[2]) + (g[5] - g[4]) + (n - g[6])  # patterns 1, 3, 5, 7
    gap = ceiling - weak
    ok = gap > eps * n
    ok &= np.asarray(keep, bool)[..., None]
    # float32 when only PGR is asked for: half the memory traffic, ample for percentile bounds
    out = np.empty((5 if accuracies else 2, *gap.shape), np.float64 if accuracies else np.float32)
    np.divide(w2s - weak, np.where(ok, gap, 1), out=out[0], dtype=out.dtype)
    out[0] *= ok
    out[1] = ok
    if accuracies:
        np.divide(weak, n, out=out[2])
        np.divide(ceiling, n, out=out[3])
        np.divide(w2s, n, out=out[4])
    return out


def _percentiles(dist: np.ndarray, level: float) -> np.ndarray:
    """Percentile bounds ``[2, k]`` of each row of ``dist`` ``[k, B]`` (numpy's linear rule),
    by one partial sort for all rows."""
    dist = np.atleast_2d(dist)
    alpha = (1.0 - level) / 2.0
    pos = np.array([alpha, 1.0 - alpha]) * (dist.shape[1] - 1)
    below, frac = np.floor(pos).astype(int), pos - np.floor(pos)
    above = np.minimum(below + 1, dist.shape[1] - 1)
    part = np.partition(dist, np.unique(np.concatenate([below, above])), axis=1)
    return part[:, below].T * (1 - frac)[:, None] + part[:, above].T * frac[:, None]


def _finite_percentiles(dist: np.ndarray, level: float) -> tuple[float, float]:
    d = dist[np.isfinite(dist)]
    if d.size == 0:
        return float("nan"), float("nan")
    lo, hi = _percentiles(d, level)[:, 0]
    return float(lo), float(hi)


def _nan_result(n_seeds: int, n_resamples: int, level: float) -> dict:
    nan = (float("nan"), float("nan"))
    return {
        "pgr": nan,
        "acc_weak": nan,
        "acc_ceiling": nan,
        "acc_w2s": nan,
        "pgr_undefined": float("nan"),
        "method": f"two-level bootstrap (seeds, then test examples; {n_resamples} resamples)",
        "n_seeds": n_seeds,
        "n_resamples": n_resamples,
        "level": level,
    }


def _fill(results: list[dict], values: np.ndarray, flat: np.ndarray, level: float) -> None:
    """Resample ``values`` ``[k, G, S, rows]`` by ``flat`` ``[S, B]`` (seed·rows + bank row of
    each slot) and write each group's percentile intervals into ``results``."""
    k, n_groups = values.shape[:2]
    drawn = np.take(values.reshape(k, n_groups, -1), flat, axis=2)  # [k, G, S, B]
    sums = drawn.sum(axis=2)  # over the seeds drawn into each resample
    with np.errstate(divide="ignore", invalid="ignore"):
        pgr = sums[0] / sums[1]  # mean PGR over the drawn seeds that count; NaN if none
    finite = np.isfinite(pgr)
    clean = finite.all(axis=1)
    bounds = _percentiles(pgr[clean], level) if clean.any() else np.empty((2, 0))
    accs = _percentiles(sums[2:].reshape(-1, sums.shape[-1]), level) if k > 2 else None
    n_seeds = values.shape[2]
    for i, result in enumerate(results):
        if clean[i]:
            j = int(clean[:i].sum())
            result["pgr"] = (float(bounds[0, j]), float(bounds[1, j]))
        else:
            result["pgr"] = _finite_percentiles(pgr[i], level)
        result["pgr_undefined"] = float(1.0 - finite[i].mean())
        if accs is not None:
            for m, name in enumerate(("acc_weak", "acc_ceiling", "acc_w2s")):
                lo, hi = accs[:, m * n_groups + i] / n_seeds
                result[name] = (float(lo), float(hi))


def grouped_two_level_bootstrap(
    groups: Sequence[np.ndarray],
    keeps: Sequence[np.ndarray | None] | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
    eps: float = 0.0,
    accuracies: bool = True,
) -> list[dict]:
    """``two_level_bootstrap_counts`` for many groups; each is ``[n_seeds, 8]`` pattern counts.

    Groups with the same number of seeds share the seed draws, and seeds with the same number of
    test examples share one bank of example resamples, both fixed by ``seed``: a group's interval
    does not depend on which other groups are analysed, and groups of one shape are computed
    together. Slot j of resample b reads bank row (b·n_seeds + j) mod rows, so the seeds drawn
    into one resample get independent example resamples; each row is reused by n_seeds slots of
    other resamples (Monte Carlo dependence only). ``accuracies=False`` leaves the accuracy
    intervals NaN, for tables that only show PGR.
    """
    keeps = list(keeps) if keeps is not None else [None] * len(groups)
    out, shapes = [], {}
    for pos, (counts, keep) in enumerate(zip(groups, keeps, strict=True)):
        counts = np.atleast_2d(np.asarray(counts, dtype=np.int64))
        n_seeds, sizes = counts.shape[0], counts.sum(axis=1)
        out.append(_nan_result(n_seeds, n_resamples, level))
        if n_seeds == 0 or (sizes <= 0).any():
            continue
        keep = np.ones(n_seeds, bool) if keep is None else np.asarray(keep, bool)
        n = int(sizes[0]) if (sizes == sizes[0]).all() else -pos - 1  # mixed sizes: alone
        shapes.setdefault((n_seeds, n), []).append((pos, counts, keep))
    banks: dict[int, np.ndarray] = {}

    def bank(n: int) -> np.ndarray:
        if n not in banks:
            banks[n] = _example_bank(n, n_resamples, seed)
        return banks[n]

    for (n_seeds, n), members in shapes.items():
        idx = np.random.default_rng([seed, 1, n_seeds]).integers(
            0, n_seeds, size=(n_resamples, n_seeds)
        )
        sizes = members[0][1].sum(axis=1)
        rows = min(bank(int(m)).shape[1] for m in sizes)
        slot = np.arange(n_resamples * n_seeds).reshape(n_resamples, n_seeds) % rows
        flat = np.ascontiguousarray((idx * rows + slot).T)  # [S, B]
        step = max(1, 1_000_000 // (n_seeds * max(rows, n_resamples)))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            counts = np.stack([c for _, c, _ in chunk])
            keep = np.stack([k for _, _, k in chunk])
            if n > 0:
                values = _seed_values(counts, bank(n), keep, eps, accuracies)
            else:  # one group whose seeds have different test-set sizes
                values = np.concatenate(
                    [
                        _seed_values(
                            counts[:, s : s + 1], bank(int(m)), keep[:, s : s + 1], eps, accuracies
                        )[..., :rows]
                        for s, m in enumerate(sizes)
                    ],
                    axis=2,
                )
            _fill([out[pos] for pos, _, _ in chunk], values, flat, level)
    return out


def two_level_bootstrap_counts(
    pattern_counts: np.ndarray,
    keep: np.ndarray | None = None,
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
    eps: float = 0.0,
) -> dict:
    """``two_level_bootstrap`` from each seed's 8 joint pattern counts ``[n_seeds, 8]``.

    The counts are sufficient: resampling a seed's test examples jointly only changes how many
    drawn examples fall in each pattern.
    """
    return grouped_two_level_bootstrap([pattern_counts], [keep], n_resamples, level, seed, eps)[0]


def two_level_bootstrap(
    weak_correct: Sequence[np.ndarray],
    ceiling_correct: Sequence[np.ndarray],
    w2s_correct: Sequence[np.ndarray],
    n_resamples: int = N_RESAMPLES,
    level: float = CI_LEVEL,
    seed: int = BOOTSTRAP_SEED,
    keep: np.ndarray | None = None,
    eps: float = 0.0,
) -> dict:
    """Percentile intervals of PGR and the three mean accuracies: seeds, then test examples.

    Each resample draws seeds with replacement, then resamples every drawn seed's test examples
    with replacement, jointly for weak, ceiling and w2s (their correlation is kept). Its PGR is
    the mean over drawn seeds of per-seed PGR, as the headline is; drawn seeds whose resampled
    gap is ≤ ``eps`` or that ``keep`` leaves out (tiny-gap seeds) are not in that mean, and a
    resample with none left is dropped (its share: ``pgr_undefined``). Accuracies use every drawn
    seed. Returns ``pgr``, ``acc_weak``, ``acc_ceiling``, ``acc_w2s`` as (lo, hi), ``method``,
    ``n_seeds``, ``n_resamples``, ``level`` and ``pgr_undefined``. Seeded and deterministic.
    """
    counts = (
        np.stack(
            [
                joint_pattern_counts(w, c, s)
                for w, c, s in zip(weak_correct, ceiling_correct, w2s_correct, strict=True)
            ]
        )
        if len(weak_correct)
        else np.zeros((0, 8), np.int64)
    )
    return two_level_bootstrap_counts(counts, keep, n_resamples, level, seed, eps)
