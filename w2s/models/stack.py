"""A model's repeated blocks, unrolled or scanned, each optionally rematerialised.

Unrolled blocks are an ``nnx.List`` (parameter paths ``layers/<i>/...``, as the checkpoint
names them). Scanned blocks are one block whose parameters carry a leading layer axis (paths
``layers/...``, shapes ``[L, ...]``), applied with ``jax.lax.scan``: the step traces and
compiles one block instead of L, so compile time stops growing with depth.

Remat wraps each block's call, so the backward pass keeps only what the policy saves (block
inputs for ``full``, also the weight matmuls' outputs for ``dots``) and recomputes the rest
one block at a time. Wrapping the whole loss instead would save nothing: the backward pass
would recompute the full forward and hold all its activations at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> str:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"train.remat '{remat}' unknown; use {', '.join(REMAT_POLICIES)}")
    return remat


def make_layers(build: Callable[[], nnx.Module], n: int, *, scan: bool):
    """``n`` blocks from ``build()``; with ``scan``, stacked into one block.

    The blocks are built one by one in both cases, so a seeded random init is the same
    whether or not the layers are scanned.
    """
    blocks = [build() for _ in range(n)]
    if not scan:
        return nnx.List(blocks)
    graphdef, first = nnx.split(blocks[0])
    states = [first]
    for i, block in enumerate(blocks[1:], 1):
        g, state = nnx.split(block)
        if g != graphdef:
            raise ValueError(
                f"block {i} differs from block 0 in structure or settings; scan_layers needs "
                f"identical blocks"
            )
        states.append(state)
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def num_layers(layers) -> int:
    if isinstance(layers, nnx.List):
        return len(layers)
    return jax.tree.leaves(nnx.state(layers))[0].shape[0]


def run_layers(layers, x: jax.Array, *args, scan: bool, remat: str, index: bool = False):
    """``x`` through every block in order: ``x = block(x, *args)`` (``block(x, *args, i)``
    with ``index``, ``i`` a Python int unrolled and a traced int32 scanned)."""
    policy = REMAT_POLICIES[check_remat(remat)]

    def apply(block, x, i):
        return block(x, *args, i) if index else block(x, *args)

    def call(graphdef, state, x, i):
        return apply(nnx.merge(graphdef, state), x, i)

    if not scan:
        for i, block in enumerate(layers):
            if policy is None:
                x = apply(block, x, i)
            else:
                graphdef, state = nnx.split(block)
                fn = jax.checkpoint(lambda s, x, g=graphdef, i=i: call(g, s, x, i), policy=policy)
                x = fn(state, x)
        return x

    graphdef, state = nnx.split(layers)

    def body(x, xs):
        s, i = xs
        return call(graphdef, s, x, i), None

    if policy is not None:  # prevent_cse only guards against CSE across unrolled copies
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    x, _ = jax.lax.scan(body, x, (state, jnp.arange(num_layers(layers), dtype=jnp.int32)))
    return x


def run_layers_cached(layers, x: jax.Array, cache, *args, scan: bool, index: bool = False):
    """``x`` through every block's ``extend`` with its slice of a KV cache (decoding):
    ``x, c = block.extend(x, *args[, i], c)``. ``cache`` is a list of per-layer caches
    unrolled, one pytree with a leading layer axis scanned; returns ``(x, cache)`` alike.
    No remat: nothing here is differentiated."""
    if not scan:
        out = []
        for i, (block, c) in enumerate(zip(layers, cache, strict=True)):
            x, c = block.extend(x, *args, *((i,) if index else ()), c)
            out.append(c)
        return x, out

    graphdef, state = nnx.split(layers)

    def body(x, xs):
        s, c, i = xs
        return nnx.merge(graphdef, s).extend(x, *args, *((i,) if index else ()), c)

    steps = jnp.arange(num_layers(layers), dtype=jnp.int32)
    return jax.lax.scan(body, x, (state, cache, steps))


def empty_cache(layers: int, shape: tuple[int, ...], dtype, scan: bool):
    """Zero (k, v) caches of ``shape`` [B, C, K, H] per layer, in ``run_layers_cached``'s
    layout: a list unrolled, one pair with a leading layer axis scanned."""
    if scan:
        full = (layers, *shape)
        return jnp.zeros(full, dtype), jnp.zeros(full, dtype)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(layers)]


# A rule's "<container>/\d+/" names one layer; the stacked parameter drops the index and adds
# an unsplit layer axis in front.
_LAYER_INDEX = re.compile(r"/\\d\+/")


def stacked_rules(rules):
    """Sharding rules for scanned blocks: per-layer rules gain a leading unsplit layer axis."""
    out = []
    for pattern, axes in rules:
        if _LAYER_INDEX.search(pattern):
            out.append((_LAYER_INDEX.sub("/", pattern), (None, *axes)))
        else:
            out.append((pattern, axes))
    return tuple(out)


def unstacked_path(path: tuple) -> tuple[tuple, int | None]:
    """``(container, i, *rest)`` -> ``((container, *rest), i)``: a checkpoint tensor's place in a
    stacked parameter. Paths without a layer index come back with ``None``."""
    for j, part in enumerate(path):
        if isinstance(part, int):
            return path[:j] + path[j + 1 :], part
    return path, None
