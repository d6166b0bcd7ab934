"""Pretrained backbones as Flax NNX modules, loaded from Hugging Face checkpoints.

``load_backbone(path_or_hub_id)`` returns a module called as ``backbone(input_ids,
attention_mask)`` that gives the final hidden states, equal to transformers'
``last_hidden_state`` for the same checkpoint; ``load_lm`` adds the checkpoint's LM head
(``w2s.models.lm``), for generation (``w2s.generate``) and token-level distillation.
"""

from __future__ import annotations

import jax.numpy as jnp

from w2s.models.classifier import Classifier, pool
from w2s.models.hub import CheckpointError
from w2s.models.lm import CausalLM, load_lm
from w2s.models.loading import abstract_module, build_config, family_rules, load_weights
from w2s.models.registry import MODEL_TYPES, Family, family_for

__all__ = [
    "MODEL_TYPES",
    "CausalLM",
    "CheckpointError",
    "Classifier",
    "Family",
    "family_for",
    "load_backbone",
    "load_classifier",
    "load_lm",
    "pool",
]


def load_backbone(
    name_or_path: str,
    dtype: str = "float32",
    *,
    compute_dtype: str | None = None,
    overrides: dict | None = None,
    attention: str = "xla",
    remat: str = "none",
    scan_layers: bool = False,
    mesh=None,
):
    """Backbone with parameters in ``dtype`` and activations in ``compute_dtype`` (default: same).

    ``overrides`` replaces keys of the HF config (e.g. ``num_hidden_layers`` to keep only the
    first layers); tensors the result does not use are listed in a log line. ``remat`` is the
    per-layer rematerialisation policy (none | full | dots); ``scan_layers`` stacks the layers'
    parameters and applies them with one ``lax.scan`` (see ``w2s.models.stack``).
    """
    ckpt, family, cfg = build_config(name_or_path, overrides)
    module = abstract_module(
        family,
        cfg,
        dtype=jnp.dtype(compute_dtype or dtype),
        param_dtype=jnp.dtype(dtype),
        attention=attention,
        remat=remat,
        scan_layers=scan_layers,
    )
    rules = family_rules(family, scan_layers)
    return load_weights(module, family, cfg, ckpt, mesh=mesh, rules=rules)


def load_classifier(
    name_or_path: str,
    num_labels: int,
    *,
    pooling: str | None = None,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    overrides: dict | None = None,
    attention: str = "xla",
    remat: str = "none",
    scan_layers: bool = False,
    mesh=None,
) -> Classifier:
    """Backbone + pooling (the family's default unless given) + zero-initialised head."""
    ckpt, family, _ = build_config(name_or_path, overrides)
    backbone = load_backbone(
        str(ckpt),
        dtype,
        compute_dtype=compute_dtype,
        overrides=overrides,
        attention=attention,
        remat=remat,
        scan_layers=scan_layers,
        mesh=mesh,
    )
    classifier = Classifier(backbone, num_labels, pooling or family.pooling)
    # the family's rules, seen from the classifier's root; the head stays replicated
    rules = family_rules(family, scan_layers)
    classifier.sharding_rules = tuple((f"backbone/{pat}", axes) for pat, axes in rules)
    return classifier
