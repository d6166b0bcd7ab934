"""Llama family: serves model_type llama, qwen2 and mistral (see ``modeling`` for limits)."""

from w2s.models.llama.modeling import Config, Model
from w2s.models.llama.params import PREFIXES, SHARDING, key_map
from w2s.models.registry import Family

FAMILY = Family(
    name="llama",
    config_from_hf=Config.from_hf,
    module=Model,
    key_map=key_map,
    prefixes=PREFIXES,
    sharding=SHARDING,
    pooling="last",
    embedding="embed_tokens",
    tied_default=False,  # transformers' LlamaConfig / Qwen2Config / MistralConfig default
    lora_targets=(
        ("attention", r"self_attn/(q_proj|k_proj|v_proj|o_proj)$"),
        ("mlp", r"mlp/(gate_proj|up_proj|down_proj)$"),
    ),
)

__all__ = ["FAMILY", "Config", "Model"]
