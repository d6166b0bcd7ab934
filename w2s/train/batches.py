"""Fixed-shape batches from variable-length token lists, grouped into length buckets.

Every batch has exactly ``batch_size`` rows and a bucket's length, so the jitted step compiles
at most once per bucket. A short last batch is filled with copies of a real row whose weight
is 0 (a copy, not an empty row, so pooling and attention stay well defined).

The order of buckets within an epoch depends only on the epoch number, and the rows within a
bucket on the seed: runs of several seeds then share their step shapes, which lets them train
side by side in one program (``train.vmap_seeds``) and still equal their separate runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Batch:
    """Indices into the training set; ``weight`` is 0 on filler rows."""

    length: int
    index: np.ndarray  # [batch_size] int
    weight: np.ndarray  # [batch_size] float32


def fit_buckets(buckets: list[int], max_length: int) -> list[int]:
    """Sorted buckets no longer than max_length, always ending at max_length."""
    fitted = sorted({b for b in buckets if b < max_length} | {max_length})
    return fitted


def bucket_of(lengths: np.ndarray, buckets: list[int]) -> np.ndarray:
    """The smallest bucket that holds each length."""
    edges = np.asarray(buckets)
    pos = np.searchsorted(edges, lengths, side="left")
    if np.any(pos >= len(edges)):
        raise ValueError(
            f"a sequence of length {int(lengths.max())} exceeds the largest bucket {edges[-1]}"
        )
    return edges[pos]


def _chunks(index: np.ndarray, length: int, batch_size: int) -> list[Batch]:
    out = []
    for start in range(0, len(index), batch_size):
        part = index[start : start + batch_size]
        weight = np.ones(batch_size, np.float32)
        if len(part) < batch_size:
            weight[len(part) :] = 0.0
            part = np.concatenate([part, np.full(batch_size - len(part), part[0])])
        out.append(Batch(int(length), part.astype(np.int64), weight))
    return out


def epoch_batches(
    lengths: np.ndarray, buckets: list[int], batch_size: int, seed: int, epoch: int
) -> list[Batch]:
    """One epoch of shuffled training batches: rows by seed, bucket order by epoch."""
    if batch_size > len(lengths):
        raise ValueError(
            f"batch size {batch_size} is larger than the training data ({len(lengths)} examples)"
        )
    bucket = bucket_of(lengths, buckets)
    rows = np.random.default_rng([seed, epoch])
    per_bucket: list[list[Batch]] = []
    for b in sorted(set(bucket.tolist())):
        members = np.flatnonzero(bucket == b)
        per_bucket.append(_chunks(rows.permutation(members), b, batch_size))
    # Interleave buckets in an order fixed by the epoch alone (shared by every seed).
    slots = np.concatenate([np.full(len(bs), i) for i, bs in enumerate(per_bucket)])
    slots = np.random.default_rng([epoch, 7919]).permutation(slots)
    cursor = [0] * len(per_bucket)
    out = []
    for s in slots:
        out.append(per_bucket[s][cursor[s]])
        cursor[s] += 1
    return out


def eval_batches(lengths: np.ndarray, buckets: list[int], batch_size: int) -> list[Batch]:
    """Every example once, in bucket order; filler rows have weight 0."""
    batch_size = max(1, min(batch_size, len(lengths)))
    bucket = bucket_of(lengths, buckets)
    out = []
    for b in sorted(set(bucket.tolist())):
        out.extend(_chunks(np.flatnonzero(bucket == b), b, batch_size))
    return out


def pad_rows(ids: list[np.ndarray], index: np.ndarray, length: int, pad_id: int):
    """Right-padded [B, length] int32 ids and the attention mask for the given rows."""
    out = np.full((len(index), length), pad_id, np.int32)
    mask = np.zeros((len(index), length), np.int32)
    for r, i in enumerate(index):
        row = ids[i][:length]
        out[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return out, mask


def shuffled_rows(n: int, batch_size: int, epochs: int, rng: np.random.Generator):
    """(steps, batches): ``epochs`` seeded shuffles of ``n`` rows cut into batches of exactly
    ``batch_size`` (at most ``n``) indices, -1 marking the all-pad filler rows of each epoch's
    last batch (one compiled step serves every batch). Each epoch's permutation is drawn from
    ``rng`` when the epoch starts, so draws the caller makes between batches keep their place."""
    bs = min(batch_size, n)
    per_epoch = -(-n // bs)

    def batches():
        for _ in range(epochs):
            order = np.concatenate([rng.permutation(n), -np.ones(per_epoch * bs - n, np.int64)])
            for b in range(per_epoch):
                yield order[b * bs : (b + 1) * bs]

    return per_epoch * epochs, batches()
