"""Llama-family decoder (Llama, Qwen2, Mistral) as a pure Flax NNX module.

One module covers the three HF model types: they share RMSNorm pre-norm, rotary position
embeddings (HF "rotate_half" layout), grouped-query attention and a SwiGLU MLP. They differ
only in which projections carry a bias, which the config records.

Inputs are right-padded, so positions are ``0..S-1`` for every row and the attention mask is
fully described by each row's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.attention import attend, attend_cached
from w2s.models.layers import ACTIVATIONS, Dense, RMSNorm
from w2s.models.stack import check_remat, empty_cache, make_layers, run_layers, run_layers_cached

_INIT = nnx.initializers.normal(0.02)  # only for modules built without a checkpoint


def _rope_theta(d: dict) -> float:
    """``rope_theta`` from either config layout; only unscaled ("default") RoPE is supported.

    transformers >= 5 writes ``rope_parameters``; older checkpoints (most on the hub) write a
    top-level ``rope_theta`` and ``rope_scaling``.
    """
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    for name, spec in (("rope_parameters", params), ("rope_scaling", scaling)):
        if spec is None:
            continue
        if not isinstance(spec, dict) or any(isinstance(v, dict) for v in spec.values()):
            raise ValueError(
                f"{name}={spec!r}: per-layer or non-dict RoPE settings are not supported"
            )
        kind = spec.get("rope_type", spec.get("type", "default"))
        if kind != "default":
            raise ValueError(
                f"RoPE type '{kind}' ({name}) is not supported; only unscaled RoPE "
                "(rope_scaling None / rope_type 'default') is implemented"
            )
    theta = (params or {}).get("rope_theta", d.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def _sliding_window(d: dict, model_type: str, num_layers: int) -> int | None:
    """The window if any kept layer uses sliding-window attention, as transformers decides."""
    window = d.get("sliding_window")
    if window is None or model_type == "llama":
        return None
    layer_types = d.get("layer_types")
    if layer_types is not None:
        return window if "sliding_attention" in layer_types[:num_layers] else None
    if model_type == "qwen2":  # Qwen2 slides only when asked, and only from max_window_layers on
        used = d.get("use_sliding_window", False) and (d.get("max_window_layers") or 0) < num_layers
        return window if used else None
    return window  # mistral: every layer


@dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None  # only checked: sequences longer than it are refused
    model_type: str = "llama"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Config:
        """From a ``config.json`` dict of model_type llama, qwen2 or mistral."""
        model_type = d.get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "mistral"):
            raise ValueError(f"model_type '{model_type}' is not a Llama-family model")
        act = d.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ValueError(f"hidden_act '{act}' is not supported; the SwiGLU MLP needs silu")
        heads = d["num_attention_heads"]
        layers = d["num_hidden_layers"]
        # Llama's attention_bias covers q, k, v and o; Qwen2 always biases q/k/v, never o.
        llama_bias = model_type == "llama" and bool(d.get("attention_bias", False))
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=_rope_theta(d),
            qkv_bias=model_type == "qwen2" or llama_bias,
            o_bias=llama_bias,
            mlp_bias=model_type == "llama" and bool(d.get("mlp_bias", False)),
            sliding_window=_sliding_window(d, model_type, layers),
            model_type=model_type,
        )


def rope_tables(positions, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin [..., head_dim] in float32 (frequencies repeated twice) for ``positions``: an
    int S for 0..S-1 (shape [S, D]), or an int array of positions such as [B, T] (decoding)."""
    if isinstance(positions, int):
        positions = jnp.arange(positions)
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.asarray(positions, jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B,S,N,D] by position (cos/sin [S,D] or [B,S,D]); HF pairs dim i with
    i + D/2 ("rotate_half")."""
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (xf * cos + rotated * sin).astype(x.dtype)


def _linear(n_in: int, n_out: int, bias: bool, *, dtype, param_dtype, rngs: nnx.Rngs) -> Dense:
    return Dense(
        n_in,
        n_out,
        use_bias=bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_INIT,
        rngs=rngs,
    )


class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs: nnx.Rngs):
        h, n, k, d = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        if n % k:
            raise ValueError(
                f"num_attention_heads {n} is not a multiple of num_key_value_heads {k}"
            )
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = _linear(h, n * d, cfg.qkv_bias, **kw)
        self.k_proj = _linear(h, k * d, cfg.qkv_bias, **kw)
        self.v_proj = _linear(h, k * d, cfg.qkv_bias, **kw)
        self.o_proj = _linear(n * d, h, cfg.o_bias, **kw)
        self.num_heads, self.num_kv_heads, self.head_dim = n, k, d
        self.attention = attention

    def _qkv(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.q_proj(x).reshape(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, s, self.num_kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, out):
        b, s = out.shape[:2]
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim))

    def __call__(self, x, cos, sin, lengths) -> jax.Array:
        q, k, v = self._qkv(x, cos, sin)
        return self._out(attend(q, k, v, lengths, causal=True, implementation=self.attention))

    def extend(self, x, cos, sin, positions, lengths, cache):
        """Tokens at ``positions`` [B,T] against a KV cache (``attend_cached``)."""
        q, k, v = self._qkv(x, cos, sin)
        out, cache = attend_cached(q, k, v, cache, positions, lengths)
        return self._out(out), cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = _linear(h, i, cfg.mlp_bias, **kw)
        self.up_proj = _linear(h, i, cfg.mlp_bias, **kw)
        self.down_proj = _linear(i, h, cfg.mlp_bias, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(ACTIVATIONS["silu"](self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs: nnx.Rngs):
        norm = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.self_attn = Attention(
            cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
        )
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **norm)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, lengths) -> jax.Array:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, lengths)
        return x + self.mlp(self.post_attention_layernorm(x))

    def extend(self, x, cos, sin, positions, lengths, cache):
        h, cache = self.self_attn.extend(
            self.input_layernorm(x), cos, sin, positions, lengths, cache
        )
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Model(nnx.Module):
    """Token embedding, decoder layers, final RMSNorm; no LM head (a classifier never needs it)."""

    def __init__(
        self,
        cfg: Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        attention: str = "xla",
        remat: str = "none",
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = cfg
        self.remat, self.scan_layers = check_remat(remat), scan_layers
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=_INIT,
            rngs=rngs,
        )
        self.layers = make_layers(
            lambda: DecoderLayer(
                cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
            ),
            cfg.num_hidden_layers,
            scan=scan_layers,
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

    def _check_window(self, s: int) -> None:
        cfg = self.config
        if cfg.sliding_window is not None and s > cfg.sliding_window:
            raise ValueError(
                f"sequence length {s} exceeds the sliding window {cfg.sliding_window} of this "
                f"{cfg.model_type} checkpoint; sliding-window attention is not implemented, "
                f"so truncate inputs to at most {cfg.sliding_window} tokens"
            )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """input_ids, attention_mask [B,S] (right-padded) -> hidden states [B,S,H].

        Sliding-window attention is not implemented: it changes nothing while S <= window, and
        longer inputs are refused rather than silently attended in full.
        """
        cfg = self.config
        s = input_ids.shape[1]
        self._check_window(s)
        lengths = jnp.sum(attention_mask, axis=-1).astype(jnp.int32)
        cos, sin = rope_tables(s, cfg.head_dim, cfg.rope_theta)
        x = self.embed_tokens(input_ids)
        x = run_layers(self.layers, x, cos, sin, lengths, scan=self.scan_layers, remat=self.remat)
        return self.norm(x)

    def init_cache(self, batch: int, capacity: int, dtype=None):
        """An empty KV cache for ``batch`` rows of up to ``capacity`` tokens (prompt + new)."""
        cfg = self.config
        self._check_window(capacity)
        shape = (batch, capacity, cfg.num_key_value_heads, cfg.head_dim)
        return empty_cache(
            cfg.num_hidden_layers, shape, dtype or self.embed_tokens.dtype, self.scan_layers
        )

    def extend(self, input_ids, positions, lengths, cache):
        """Hidden states [B,T,H] of tokens ``input_ids`` [B,T] at ``positions`` [B,T], each row
        seeing cached keys ``j < lengths[b]`` up to its own position; returns the cache with
        these tokens written. A prompt is one call (positions 0..S-1), each new token one more.
        """
        cfg = self.config
        cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        x = self.embed_tokens(input_ids)
        x, cache = run_layers_cached(
            self.layers, x, cache, cos, sin, positions, lengths, scan=self.scan_layers
        )
        return self.norm(x), cache
