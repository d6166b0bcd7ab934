"""BERT family (``model_type: bert``, MiniLM included); classifiers pool the [CLS] token."""

from w2s.models.bert import params
from w2s.models.bert.modeling import Config, Model
from w2s.models.registry import Family

FAMILY = Family(
    name="bert",
    config_from_hf=Config.from_hf,
    module=Model,
    key_map=params.key_map,
    prefixes=params.PREFIXES,
    sharding=params.SHARDING,
    pooling="cls",
    lora_targets=(
        ("attention", r"attention/(query|key|value|output)$"),
        ("mlp", r"layers/(\d+/)?(intermediate|output)$"),
    ),
)

__all__ = ["FAMILY", "Config", "Model"]
