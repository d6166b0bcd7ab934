"""Causal language models: a decoder backbone with its LM head, as a checkpoint defines it.

The head is tied (logits against the token embedding) or its own ``lm_head`` projection, as
``config.json``'s ``tie_word_embeddings`` says (each family's transformers default when it is
silent). Logits are float32 whatever the compute dtype. ``extend`` runs tokens against a KV
cache, which is what ``w2s.generate`` decodes with.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from w2s.models.hub import read_config
from w2s.models.layers import Dense
from w2s.models.loading import build_config, family_rules, load_weights


class CausalLM(nnx.Module):
    def __init__(self, backbone: nnx.Module, embedding: str, tied: bool, *, dtype, param_dtype):
        self.backbone = backbone
        self.embedding = embedding  # the backbone's token embedding attribute, for a tied head
        self.tied = tied
        cfg = backbone.config
        if not tied:
            self.lm_head = Dense(
                cfg.hidden_size,
                cfg.vocab_size,
                use_bias=False,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=nnx.Rngs(0),
            )

    @property
    def config(self):
        return self.backbone.config

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[..., H] hidden states -> [..., V] float32 next-token logits."""
        if not self.tied:
            return self.lm_head(hidden).astype(jnp.float32)
        table = getattr(self.backbone, self.embedding).embedding[...]
        return jnp.matmul(hidden, table.astype(hidden.dtype).T, preferred_element_type=jnp.float32)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """Right-padded input_ids, attention_mask [B,S] -> logits [B,S,V] (float32)."""
        return self.logits(self.backbone(input_ids, attention_mask))

    def init_cache(self, batch: int, capacity: int):
        return self.backbone.init_cache(batch, capacity)

    def extend(self, input_ids, positions, lengths, cache):
        """(hidden [B,T,H], cache): see the backbone's ``extend``; ``logits`` maps hidden states
        of the positions that need them, so a prompt's pass need not project every token."""
        return self.backbone.extend(input_ids, positions, lengths, cache)


def load_lm(
    name_or_path: str,
    dtype: str = "float32",
    *,
    compute_dtype: str | None = None,
    overrides: dict | None = None,
    attention: str = "xla",
    remat: str = "none",
    scan_layers: bool = False,
    mesh=None,
) -> CausalLM:
    """A causal LM (gpt2 or llama family) with parameters in ``dtype`` and activations in
    ``compute_dtype``; the other settings are those of ``load_backbone``."""
    ckpt, family, cfg = build_config(name_or_path, overrides)
    if not family.embedding:
        raise ValueError(
            f"{ckpt}: model_type '{read_config(ckpt).get('model_type')}' is not a causal LM "
            "(no LM head); use load_backbone / load_classifier"
        )
    tied = bool(read_config(ckpt).get("tie_word_embeddings", family.tied_default))
    compute, params = jnp.dtype(compute_dtype or dtype), jnp.dtype(dtype)
    module = nnx.eval_shape(
        lambda: CausalLM(
            family.module(
                cfg,
                dtype=compute,
                param_dtype=params,
                attention=attention,
                remat=remat,
                scan_layers=scan_layers,
                rngs=nnx.Rngs(0),
            ),
            family.embedding,
            tied,
            dtype=compute,
            param_dtype=params,
        )
    )
    key_map = {k: (("backbone", *path), fn) for k, (path, fn) in family.key_map(cfg).items()}
    rules = tuple((f"backbone/{pat}", axes) for pat, axes in family_rules(family, scan_layers))
    if not tied:  # torch Linear [V, H] -> kernel [H, V]; vocabulary over tp, as the embedding
        key_map["lm_head.weight"] = (("lm_head", "kernel"), lambda w: w.T)
        rules = (*rules, (r"lm_head/kernel", ("fsdp", "tp")))
    lm = load_weights(module, family, cfg, ckpt, mesh=mesh, rules=rules, key_map=key_map)
    lm.sharding_rules = rules
    return lm
