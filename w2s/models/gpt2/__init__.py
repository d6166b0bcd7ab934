"""GPT-2 family (``model_type: gpt2``); classifiers pool the last real token (causal model)."""

from w2s.models.gpt2 import params
from w2s.models.gpt2.modeling import Config, Model
from w2s.models.registry import Family

FAMILY = Family(
    name="gpt2",
    config_from_hf=Config.from_hf,
    module=Model,
    key_map=params.key_map,
    prefixes=params.PREFIXES,
    sharding=params.SHARDING,
    pooling="last",
    embedding="wte",
    tied_default=True,  # transformers' GPT2Config default
    lora_targets=(("attention", r"attn/(c_attn|c_proj)$"), ("mlp", r"mlp/(c_fc|c_proj)$")),
)

__all__ = ["FAMILY", "Config", "Model"]
