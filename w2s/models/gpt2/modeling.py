"""GPT-2 (Radford et al. 2019) in Flax NNX: learned positions, pre-LN blocks, causal attention.

Parameter names follow the HF checkpoint (``wte``, ``h/<i>/attn/c_attn`` ...) so the key map
in ``params.py`` reads as a near-identity. The fused q/k/v projection keeps GPT-2's single
kernel but as ``[hidden, 3, hidden]``, so tensor parallelism splits heads, not the q|k|v
concatenation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.attention import attend, attend_cached
from w2s.models.layers import ACTIVATIONS, Dense, LayerNorm, dense_einsum
from w2s.models.lora import delta as lora_delta
from w2s.models.stack import check_remat, empty_cache, make_layers, run_layers, run_layers_cached


def _pick(d: dict, *names: str, default=None):
    """First of ``names`` present in the HF config; standard names come before GPT-2 aliases,
    so an override such as ``num_hidden_layers`` wins over the checkpoint's ``n_layer``."""
    for n in names:
        if d.get(n) is not None:
            return d[n]
    if default is None:
        raise ValueError(f"gpt2 config.json lacks {' / '.join(repr(n) for n in names)}")
    return default


@dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    eps: float = 1e-5
    activation: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        hidden = _pick(d, "hidden_size", "n_embd")
        cfg = cls(
            vocab_size=_pick(d, "vocab_size"),
            hidden_size=hidden,
            num_layers=_pick(d, "num_hidden_layers", "n_layer"),
            num_heads=_pick(d, "num_attention_heads", "n_head"),
            intermediate_size=_pick(d, "intermediate_size", "n_inner", default=4 * hidden),
            max_positions=_pick(d, "max_position_embeddings", "n_positions"),
            eps=_pick(d, "layer_norm_epsilon", default=1e-5),
            activation=_pick(d, "activation_function", default="gelu_new"),
            scale_attn_weights=d.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=d.get("scale_attn_by_inverse_layer_idx", False),
        )
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(
                f"gpt2: n_embd {cfg.hidden_size} is not a multiple of n_head {cfg.num_heads}"
            )
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(
                f"gpt2: activation '{cfg.activation}' unknown; known: {sorted(ACTIVATIONS)}"
            )
        if cfg.num_layers < 1:
            raise ValueError(f"gpt2: num_hidden_layers must be >= 1, got {cfg.num_layers}")
        return cfg


class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs):
        h = cfg.hidden_size
        self.c_attn = nnx.Einsum(
            "bsh,hkd->bskd", (h, 3, h), (3, h), dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.c_proj = Dense(h, h, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        self.inverse_layer_idx = cfg.scale_attn_by_inverse_layer_idx
        self.attention = attention
        self.dtype = dtype

    def _qkv(self, x: jax.Array):
        b, s, _ = x.shape
        qkv = dense_einsum(x, self.c_attn.kernel[...], self.c_attn.bias[...], self.dtype)
        if getattr(self.c_attn, "lora", None) is not None:  # a LoRA adapter on the fused qkv
            x2d = x.reshape(-1, x.shape[-1]).astype(self.dtype)
            qkv = qkv + lora_delta(self.c_attn, x2d).reshape(qkv.shape)
        qkv = qkv.reshape(b, s, 3, self.num_heads, self.head_dim)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def _scale(self, layer):
        return self.scale / (layer + 1) if self.inverse_layer_idx else self.scale

    def __call__(self, x: jax.Array, lengths: jax.Array, layer) -> jax.Array:
        """``layer``: this block's index (an int, or traced when the layers are scanned)."""
        q, k, v = self._qkv(x)
        out = attend(
            q, k, v, lengths, causal=True, implementation=self.attention, scale=self._scale(layer)
        )
        return self.c_proj(out.reshape(*x.shape[:2], -1))

    def extend(self, x, positions, lengths, layer, cache):
        """Tokens at ``positions`` [B,T] against a KV cache (``attend_cached``)."""
        q, k, v = self._qkv(x)
        out, cache = attend_cached(q, k, v, cache, positions, lengths, scale=self._scale(layer))
        return self.c_proj(out.reshape(*x.shape[:2], -1)), cache


class MLP(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, rngs):
        h, i = cfg.hidden_size, cfg.intermediate_size
        self.c_fc = Dense(h, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.c_proj = Dense(i, h, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nnx.Module):
    """Pre-LN: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs):
        norm = partial(LayerNorm, cfg.hidden_size, cfg.eps, dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = norm()
        self.attn = Attention(
            cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
        )
        self.ln_2 = norm()
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array, lengths: jax.Array, layer) -> jax.Array:
        x = x + self.attn(self.ln_1(x), lengths, layer)
        return x + self.mlp(self.ln_2(x))

    def extend(self, x, positions, lengths, layer, cache):
        h, cache = self.attn.extend(self.ln_1(x), positions, lengths, layer, cache)
        x = x + h
        return x + self.mlp(self.ln_2(x)), cache


class Model(nnx.Module):
    """GPT-2 backbone: ``(input_ids [B,S], attention_mask [B,S]) -> hidden [B,S,H]`` after ln_f.

    Rows are right-padded; the mask only gives each row's length.
    """

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
        embed = partial(nnx.Embed, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.wte = embed(cfg.vocab_size, cfg.hidden_size)
        self.wpe = embed(cfg.max_positions, cfg.hidden_size)
        self.h = make_layers(
            lambda: Block(
                cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
            ),
            cfg.num_layers,
            scan=scan_layers,
        )
        self.ln_f = LayerNorm(cfg.hidden_size, cfg.eps, dtype=dtype, param_dtype=param_dtype)

    def _check_length(self, s: int) -> None:
        if s > self.config.max_positions:  # jnp.take would fill with NaN
            raise ValueError(
                f"gpt2: sequence length {s} exceeds n_positions {self.config.max_positions}"
            )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        self._check_length(input_ids.shape[1])
        lengths = attention_mask.sum(-1)
        positions = jnp.arange(input_ids.shape[1])
        x = self.wte(input_ids) + self.wpe(positions)[None]
        x = run_layers(self.h, x, lengths, scan=self.scan_layers, remat=self.remat, index=True)
        return self.ln_f(x)

    def init_cache(self, batch: int, capacity: int, dtype=None):
        """An empty KV cache for ``batch`` rows of up to ``capacity`` tokens (prompt + new)."""
        cfg = self.config
        self._check_length(capacity)
        shape = (batch, capacity, cfg.num_heads, cfg.head_dim)
        return empty_cache(cfg.num_layers, shape, dtype or self.wte.dtype, self.scan_layers)

    def extend(self, input_ids, positions, lengths, cache):
        """Hidden states [B,T,H] of tokens ``input_ids`` [B,T] at ``positions`` [B,T], each row
        seeing cached keys ``j < lengths[b]`` up to its own position; returns the cache with
        these tokens written."""
        x = self.wte(input_ids) + self.wpe(positions)
        x, cache = run_layers_cached(
            self.h, x, cache, positions, lengths, scan=self.scan_layers, index=True
        )
        return self.ln_f(x), cache
