"""Model families and the ``model_type`` values each one serves.

A family package (``w2s/models/<family>/``) exposes ``FAMILY``: how to build its config from
the HF ``config.json``, its NNX module, the explicit map from HF tensor names to NNX parameter
paths, and how its parameters shard over the mesh.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

# HF tensor name (architecture prefix removed) -> (NNX parameter path, transform or None)
KeyMap = dict[str, tuple[tuple[str | int, ...], Callable[[np.ndarray], np.ndarray] | None]]


@dataclass(frozen=True)
class Family:
    name: str
    config_from_hf: Callable[[dict], Any]  # HF config dict -> frozen dataclass with hidden_size
    module: Callable[..., Any]  # module(cfg, *, dtype, param_dtype, attention, rngs) -> nnx.Module
    key_map: Callable[[Any], KeyMap]
    prefixes: tuple[str, ...]  # architecture prefixes that checkpoints may put on every key
    sharding: tuple[tuple[str, tuple[str | None, ...]], ...]  # (path regex, mesh axis per dim)
    pooling: str  # default pooling for classification: last | cls | mean
    # LoRA target groups: (group, regex over module paths), e.g. ("mlp", r"mlp/(c_fc|c_proj)$")
    lora_targets: tuple[tuple[str, str], ...] = ()
    # causal LMs (``w2s.models.lm``): the token embedding module, which a tied LM head reuses
    # ("" for encoder-only families), and whether heads are tied when config.json does not say
    embedding: str = ""
    tied_default: bool = True


# model_type in config.json -> family package
MODEL_TYPES: dict[str, str] = {
    "gpt2": "gpt2",
    "bert": "bert",
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
}


def family_for(model_type: str | None, where: str) -> Family:
    if model_type not in MODEL_TYPES:
        raise ValueError(
            f"{where}: model_type '{model_type}' is not supported; "
            f"supported model types: {', '.join(sorted(MODEL_TYPES))}"
        )
    return importlib.import_module(f"w2s.models.{MODEL_TYPES[model_type]}").FAMILY
