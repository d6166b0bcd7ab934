"""HF checkpoint names -> NNX parameter paths, and how the parameters shard.

NNX paths mirror the HF names (``layers/3/self_attn/q_proj/kernel``), so the map is a
renaming plus a transpose: ``nn.Linear`` stores [out, in], ``nnx.Linear`` [in, out].
"""

from __future__ import annotations

import numpy as np

from w2s.models.llama.modeling import Config
from w2s.models.registry import KeyMap

# LlamaForCausalLM & co. put the backbone under ``model.``; LlamaModel has no prefix.
PREFIXES = ("model.",)

_LAYER = r"layers/\d+"
# Megatron-style: column-parallel q/k/v/gate/up split their outputs over tp, row-parallel
# o/down split their inputs over tp, so each block needs one reduction. fsdp takes the other dim.
SHARDING: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"embed_tokens/embedding", ("tp", "fsdp")),
    (rf"{_LAYER}/self_attn/(q|k|v)_proj/kernel", ("fsdp", "tp")),
    (rf"{_LAYER}/self_attn/(q|k|v)_proj/bias", ("tp",)),
    (rf"{_LAYER}/self_attn/o_proj/kernel", ("tp", "fsdp")),
    (rf"{_LAYER}/mlp/(gate|up)_proj/kernel", ("fsdp", "tp")),
    (rf"{_LAYER}/mlp/(gate|up)_proj/bias", ("tp",)),
    (rf"{_LAYER}/mlp/down_proj/kernel", ("tp", "fsdp")),
    (rf"{_LAYER}/(self_attn/o_proj|mlp/down_proj)/bias", (None,)),
    (rf"{_LAYER}/(input_layernorm|post_attention_layernorm)/scale", (None,)),
    (r"norm/scale", (None,)),
)


def _kernel(w: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> NNX kernel [in, out]."""
    return w.T


def key_map(cfg: Config) -> KeyMap:
    """Every backbone tensor of the checkpoint; ``lm_head.weight`` and layers past
    ``num_hidden_layers`` are deliberately absent, so the loader lists them as unused."""
    m: KeyMap = {
        "embed_tokens.weight": (("embed_tokens", "embedding"), None),
        "norm.weight": (("norm", "scale"), None),
    }
    biases = {
        "self_attn.q_proj": cfg.qkv_bias,
        "self_attn.k_proj": cfg.qkv_bias,
        "self_attn.v_proj": cfg.qkv_bias,
        "self_attn.o_proj": cfg.o_bias,
        "mlp.gate_proj": cfg.mlp_bias,
        "mlp.up_proj": cfg.mlp_bias,
        "mlp.down_proj": cfg.mlp_bias,
    }
    for i in range(cfg.num_hidden_layers):
        hf, nx = f"layers.{i}.", ("layers", i)
        for proj, bias in biases.items():
            path = (*nx, *proj.split("."))
            m[f"{hf}{proj}.weight"] = ((*path, "kernel"), _kernel)
            if bias:
                m[f"{hf}{proj}.bias"] = ((*path, "bias"), None)
        for norm in ("input_layernorm", "post_attention_layernorm"):
            m[f"{hf}{norm}.weight"] = ((*nx, norm, "scale"), None)
    return m
