"""Text generation from a causal LM (``w2s.models.load_lm``): one prefill, then cached decoding.

Prompts come right-padded, as everywhere in the project. The prefill runs every prompt through
the model once and fills a KV cache; each new token is then one cached step inside a
``lax.while_loop`` that ends when every row has emitted ``eos_id`` (or after
``max_new_tokens``). Row ``b``'s first new token sits at position ``len_b``, overwriting its
pad slots, so each row's cache stays contiguous and rows of different lengths decode together.
Prompts are padded to a length bucket (a power of two, at least 16), so a new prompt length
compiles again only when it crosses into a new bucket.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

MIN_BUCKET = 16


def bucket_length(n: int) -> int:
    """The padded prompt length for a longest prompt of ``n`` tokens."""
    return max(MIN_BUCKET, 1 << max(n - 1, 0).bit_length())


def _check_prompts(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(
            f"generate: input_ids {input_ids.shape} and attention_mask {attention_mask.shape} "
            "must both be [batch, seq]"
        )
    lengths = attention_mask.sum(1).astype(np.int32)
    right_padded = (attention_mask == (np.arange(input_ids.shape[1]) < lengths[:, None])).all()
    if not right_padded:
        raise ValueError("generate: prompts must be right-padded (mask 1...1 0...0 per row)")
    if (lengths == 0).any():
        raise ValueError(f"generate: empty prompt in row(s) {np.flatnonzero(lengths == 0)[:5]}")
    return lengths


def _choose(logits: jax.Array, key: jax.Array, temperature: float, top_p: float):
    """(token [B], its log-probability under the model at temperature 1 [B])."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    if temperature == 0.0:
        token = jnp.argmax(logits, axis=-1)
    else:
        scaled = logits / temperature
        if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
            order = jnp.argsort(-scaled, axis=-1)
            sorted_p = jnp.take_along_axis(jax.nn.softmax(scaled, -1), order, axis=-1)
            before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass of more likely tokens
            keep_sorted = before < top_p
            keep = (
                jnp.zeros_like(keep_sorted)
                .at[jnp.arange(logits.shape[0])[:, None], order]
                .set(keep_sorted)
            )
            scaled = jnp.where(keep, scaled, -jnp.inf)
        token = jax.random.categorical(key, scaled, axis=-1)
    token = token.astype(jnp.int32)
    return token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]


@partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _generate(graphdef, state, input_ids, lengths, max_new, temperature, top_p, eos_id, key):
    lm = nnx.merge(graphdef, state)
    b, s = input_ids.shape
    cache = lm.init_cache(b, s + max_new)
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    hidden, cache = lm.extend(input_ids, positions, lengths, cache)
    last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
    key, sub = jax.random.split(key)
    token, logp = _choose(lm.logits(last), sub, temperature, top_p)
    fill = 0 if eos_id is None else eos_id
    tokens = jnp.full((b, max_new), fill, jnp.int32).at[:, 0].set(token)
    logps = jnp.zeros((b, max_new), jnp.float32).at[:, 0].set(logp)
    done = jnp.zeros((b,), bool) if eos_id is None else token == eos_id

    def cond(carry):
        t, *_, done, _ = carry
        return (t < max_new) & ~jnp.all(done)

    def body(carry):
        t, tokens, logps, cache, token, pos, done, key = carry
        hidden, cache = lm.extend(token[:, None], pos[:, None], pos + 1, cache)
        key, sub = jax.random.split(key)
        new, logp = _choose(lm.logits(hidden[:, 0]), sub, temperature, top_p)
        new = jnp.where(done, fill, new)
        tokens = tokens.at[:, t].set(new)
        logps = logps.at[:, t].set(jnp.where(done, 0.0, logp))
        if eos_id is not None:
            done = done | (new == eos_id)
        return t + 1, tokens, logps, cache, new, pos + 1, done, key

    carry = (jnp.int32(1), tokens, logps, cache, token, lengths, done, key)
    _, tokens, logps, *_ = jax.lax.while_loop(cond, body, carry)
    return tokens, logps


def generate(
    lm,
    input_ids,
    attention_mask,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    seed: int = 0,
    return_logprobs: bool = False,
):
    """New tokens [B, max_new_tokens] (int32) for right-padded prompts [B, S].

    ``temperature=0`` is greedy; otherwise tokens are sampled at that temperature from the
    nucleus of mass ``top_p``, reproducibly for a ``seed``. After a row's first ``eos_id``
    (kept) the row holds ``eos_id``. With ``return_logprobs`` also returns each new token's
    log-probability under the model itself (temperature 1, no nucleus), 0 after EOS.
    """
    if max_new_tokens < 1:
        raise ValueError(f"generate: max_new_tokens must be >= 1, not {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(
            f"generate: need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
        )
    ids = np.asarray(input_ids, np.int32)
    mask = np.asarray(attention_mask)
    lengths = _check_prompts(ids, mask)
    s = bucket_length(int(lengths.max()))
    padded = np.zeros((ids.shape[0], s), np.int32)
    keep = min(s, ids.shape[1])
    padded[:, :keep] = (ids * mask)[:, :keep]
    graphdef, state = nnx.split(lm)
    tokens, logps = _generate(
        graphdef,
        state,
        jnp.asarray(padded),
        jnp.asarray(lengths),
        int(max_new_tokens),
        float(temperature),
        float(top_p),
        None if eos_id is None else int(eos_id),
        jax.random.key(seed),
    )
    return (tokens, logps) if return_logprobs else tokens
