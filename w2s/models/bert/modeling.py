"""BERT (Devlin et al. 2019) encoder in Flax NNX; MiniLM and other BERT-shaped models included.

Embeddings are word + absolute position + token type 0, then LayerNorm; each layer is post-LN
(``LN(x + attn(x))``, ``LN(x + ffn(x))``) with bidirectional attention over the row's real
tokens. The backbone takes only ids and mask, so every token has segment 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.attention import attend
from w2s.models.layers import ACTIVATIONS, Dense, LayerNorm
from w2s.models.stack import check_remat, make_layers, run_layers


@dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int = 2
    eps: float = 1e-12
    activation: str = "gelu"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        required = (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
        )
        absent = [k for k in required if d.get(k) is None]
        if absent:
            raise ValueError(f"bert config.json lacks {absent}")
        position = d.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(
                f"bert: position_embedding_type '{position}' is not supported (absolute only)"
            )
        cfg = cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            max_positions=d["max_position_embeddings"],
            type_vocab_size=d.get("type_vocab_size", 2),
            eps=d.get("layer_norm_eps", 1e-12),
            activation=d.get("hidden_act", "gelu"),
        )
        if cfg.hidden_size % cfg.num_heads:
            raise ValueError(
                f"bert: hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads {cfg.num_heads}"
            )
        if cfg.activation not in ACTIVATIONS:
            raise ValueError(
                f"bert: hidden_act '{cfg.activation}' unknown; known: {sorted(ACTIVATIONS)}"
            )
        if cfg.num_layers < 0:
            raise ValueError(f"bert: num_hidden_layers must be >= 0, got {cfg.num_layers}")
        return cfg


class Embeddings(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, rngs):
        embed = partial(nnx.Embed, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.word_embeddings = embed(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = embed(cfg.max_positions, cfg.hidden_size)
        self.token_type_embeddings = embed(cfg.type_vocab_size, cfg.hidden_size)
        self.layer_norm = LayerNorm(cfg.hidden_size, cfg.eps, dtype=dtype, param_dtype=param_dtype)
        self.dtype = dtype

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])
        segment0 = self.token_type_embeddings.embedding[0].astype(self.dtype)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] + segment0
        return self.layer_norm(x)


class SelfAttention(nnx.Module):
    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs):
        linear = partial(
            Dense,
            cfg.hidden_size,
            cfg.hidden_size,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.query, self.key, self.value, self.output = linear(), linear(), linear(), linear()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.attention = attention

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        b, s, _ = x.shape
        q, k, v = (
            proj(x).reshape(b, s, self.num_heads, self.head_dim)
            for proj in (self.query, self.key, self.value)
        )
        out = attend(q, k, v, lengths, causal=False, implementation=self.attention)
        return self.output(out.reshape(b, s, -1))


class Layer(nnx.Module):
    """Post-LN: x = LN(x + attn(x)); x = LN(x + output(act(intermediate(x))))."""

    def __init__(self, cfg: Config, *, dtype, param_dtype, attention: str, rngs):
        norm = partial(LayerNorm, cfg.hidden_size, cfg.eps, dtype=dtype, param_dtype=param_dtype)
        self.attention = SelfAttention(
            cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
        )
        self.attention_norm = norm()
        self.intermediate = Dense(
            cfg.hidden_size, cfg.intermediate_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.output = Dense(
            cfg.intermediate_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.output_norm = norm()
        self.act = ACTIVATIONS[cfg.activation]

    def __call__(self, x: jax.Array, lengths: jax.Array) -> jax.Array:
        x = self.attention_norm(x + self.attention(x, lengths))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class Model(nnx.Module):
    """BERT encoder: ``(input_ids [B,S], attention_mask [B,S]) -> hidden [B,S,H]`` (no pooler).

    Rows are right-padded; the mask only gives each row's length, and pad keys are masked.
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
        self.embeddings = Embeddings(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = make_layers(
            lambda: Layer(
                cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=rngs
            ),
            cfg.num_layers,
            scan=scan_layers,
        )

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        if input_ids.shape[1] > self.config.max_positions:  # jnp.take would fill with NaN
            raise ValueError(
                f"bert: sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_positions}"
            )
        lengths = attention_mask.sum(-1)
        x = self.embeddings(input_ids)
        return run_layers(self.layers, x, lengths, scan=self.scan_layers, remat=self.remat)
