"""What a w2s run learns from: the weak runs' soft labels (one or several supervisors),
confidence filtering, the tempered teacher of cached labels, and the live teacher.

The supervisor's probabilities are read back from its runs' stored predictions, on B (what the
student trains on), val (what model selection may score against) and test (what the
supervisor itself scores: PGR is measured against the labels actually trained on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from w2s.metrics import accuracy
from w2s.store import RunStore

COMBINES = ("mean", "confidence")


@dataclass
class Supervision:
    """The (combined) supervisor's probabilities per split, and each member's test accuracy."""

    probs: dict[str, np.ndarray]  # split -> [N, C], rows in the split's order
    accuracy: float  # combined supervisor on test
    members: list[dict]  # [{"model", "run_id", "accuracy"}] in supervisor order


def combine(stacked: np.ndarray, how: str) -> np.ndarray:
    """Merge ``[M, N, C]`` supervisors' probabilities into one ``[N, C]``."""
    if how == "mean":
        return stacked.mean(0)
    if how == "confidence":  # each supervisor weighted by its own top probability, per example
        conf = stacked.max(-1, keepdims=True)
        return (stacked * conf).sum(0) / conf.sum(0)
    raise ValueError(f"weak_combine '{how}' unknown; use one of {', '.join(COMBINES)}")


def _split_probs(df, kind: str, rid: str, split: str, ids: list[str]) -> np.ndarray:
    df = df[df["split"] == split].set_index("id")
    missing = [i for i in ids if i not in df.index]
    if missing:
        raise ValueError(
            f"{kind} run {rid} has no {split} prediction for {len(missing)} example(s), e.g. "
            f"{missing[0]!r}: it was made on other rows"
        )
    return np.stack(df.loc[ids, "probs"].to_numpy()).astype(np.float32)


def read_supervision(
    store: RunStore,
    runs: list[dict],
    ids: dict[str, list[str]],
    test_labels: np.ndarray,
    how: str = "mean",
    kind: str = "weak",
) -> Supervision:
    """Soft labels of ``runs`` (weak runs, or a previous strong round) on the splits in ``ids``."""
    frames = [store.predictions(kind, r["run_id"]) for r in runs]  # each file read once
    probs = {}
    for split, split_ids in ids.items():
        stacked = np.stack([
            _split_probs(df, kind, r["run_id"], split, split_ids)
            for df, r in zip(frames, runs, strict=True)
        ])
        probs[split] = stacked[0] if len(runs) == 1 else combine(stacked, how)
    members = [
        {"model": r.get("weak_model") or r.get("strong_model"), "run_id": r["run_id"],
         "accuracy": float(r["accuracy"])}
        for r in runs
    ]
    return Supervision(probs, accuracy(probs["test"], test_labels), members)


def confident_rows(soft: np.ndarray, q: float) -> np.ndarray:
    """Sorted positions of the top-``q`` share of rows by the supervisor's top probability."""
    if q >= 1:
        return np.arange(len(soft))
    k = max(1, int(round(q * len(soft))))
    return np.sort(np.argsort(-soft.max(-1), kind="stable")[:k])


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log q / T)``: cached probabilities at temperature T, as a live teacher's
    ``softmax(z / T)`` would be (``log q`` is ``z`` up to a constant per row)."""
    if temperature == 1:
        return probs
    logq = np.log(np.clip(probs.astype(np.float64), 1e-30, None)) / temperature
    logq -= logq.max(-1, keepdims=True)
    e = np.exp(logq)
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def uses_temperature(loss_cfg) -> bool:
    """Whether the loss tempers the student (the combined KD objective does, by T)."""
    return loss_cfg.name == "kd" or loss_cfg.supervision == "live"


def gt_mask(seed: int, n: int, fraction: float) -> np.ndarray:
    """aux='gt': a seeded share of B's rows that keep their ground truth (not pure W2S)."""
    n_gt = int(round(fraction * n))
    chosen = np.random.default_rng([seed, 17]).permutation(n)[:n_gt]
    return np.isin(np.arange(n), chosen).astype(np.float32)
