"""Updates of parameters stored below float32 (bf16, fp16) that do not get lost in rounding.

An AdamW step at lr 1e-5 moves a weight by about 1e-5, far below bf16's resolution at typical
weight sizes (its spacing near 0.02 is 1.2e-4): added in bf16 the update rounds away and the
backbone never moves. Three cures, chosen by ``train.low_precision_update``:

- ``master``: the optimizer keeps a float32 copy of every low-precision parameter and updates
  that; the stored parameter is its rounding (4 more bytes per parameter: for memory, float32
  params with bf16 compute are as good and simpler);
- ``kahan``: a bf16/fp16 compensation buffer carries each step's rounding error into the next
  (2 more bytes per parameter);
- ``stochastic``: the new value is rounded up or down at random, in proportion to its distance
  to each neighbour, so the update survives in expectation (no extra bytes; bf16 only).

Float32 parameters (the head, or a float32 model) pass through untouched. The inner optimizer
always sees float32 gradients and parameters, so its moments are float32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MODES = ("master", "kahan", "stochastic")
_EMPTY = ()  # the per-leaf state of a float32 parameter


def _low(x) -> bool:
    return jnp.dtype(x.dtype).itemsize < 4 and jnp.issubdtype(x.dtype, jnp.floating)


class LowPrecisionState(NamedTuple):
    inner: optax.OptState
    extra: object  # per leaf: float32 master, compensation in the param's dtype, or ()
    count: jax.Array  # steps taken (stochastic rounding's key)


def stochastic_round_bf16(x: jax.Array, key: jax.Array) -> jax.Array:
    """Round float32 ``x`` to bf16 up or down at random, unbiased: add 16 random bits below
    bf16's mantissa and truncate."""
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    noise = jax.random.bits(key, x.shape, jnp.uint32) & jnp.uint32(0xFFFF)
    rounded = (bits + noise) & jnp.uint32(0xFFFF0000)
    out = jax.lax.bitcast_convert_type(rounded, jnp.float32)
    return jnp.where(jnp.isfinite(x), out, x).astype(jnp.bfloat16)  # exact: low bits are 0


def low_precision(
    inner: optax.GradientTransformation, mode: str = "master", seed: int = 0
) -> optax.GradientTransformation:
    """Wrap ``inner`` so that low-precision parameters receive their updates (see module doc)."""
    if mode not in MODES:
        raise ValueError(f"train.low_precision_update={mode!r} unknown; use {', '.join(MODES)}")

    def init(params):
        def extra(p):
            if not _low(p):
                return _EMPTY
            if mode == "master":
                return p.astype(jnp.float32)
            if mode == "kahan":
                return jnp.zeros_like(p)
            if p.dtype != jnp.bfloat16:
                raise ValueError(
                    f"train.low_precision_update=stochastic rounds to bfloat16 only, not "
                    f"{p.dtype}; use master or kahan"
                )
            return _EMPTY

        params32 = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        return LowPrecisionState(
            inner.init(params32), jax.tree.map(extra, params), jnp.zeros([], jnp.int32)
        )

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("low_precision needs the parameters")
        leaves, treedef = jax.tree.flatten(params)
        extras = treedef.flatten_up_to(state.extra)
        # the float32 values the inner optimizer updates
        exact = [
            e if mode == "master" and _low(p) else p.astype(jnp.float32)
            for p, e in zip(leaves, extras, strict=True)
        ]
        if mode == "kahan":
            exact = [
                x + e.astype(jnp.float32) if _low(p) else x
                for x, p, e in zip(exact, leaves, extras, strict=True)
            ]
        grads32 = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        upd, inner_state = inner.update(grads32, state.inner, treedef.unflatten(exact))
        upd = treedef.flatten_up_to(upd)
        key = jax.random.fold_in(jax.random.key(seed), state.count)
        out, new_extra = [], []
        for i, (p, x, u, e) in enumerate(zip(leaves, exact, upd, extras, strict=True)):
            target = x + u  # float32
            if not _low(p):
                out.append(u.astype(p.dtype))
                new_extra.append(e)
                continue
            if mode == "stochastic":
                stored = stochastic_round_bf16(target, jax.random.fold_in(key, i))
            else:
                stored = target.astype(p.dtype)
            # float32 difference: params + update, added in float32 and cast, gives `stored`
            out.append(stored.astype(jnp.float32) - p.astype(jnp.float32))
            if mode == "master":
                new_extra.append(target)
            elif mode == "kahan":
                new_extra.append((target - stored.astype(jnp.float32)).astype(p.dtype))
            else:
                new_extra.append(e)
        return treedef.unflatten(out), LowPrecisionState(
            inner_state, treedef.unflatten(new_extra), state.count + 1
        )

    return optax.GradientTransformation(init, update)

