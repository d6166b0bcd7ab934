"""HF BERT tensor names -> NNX parameter paths, and how those parameters shard.

PyTorch ``nn.Linear`` stores ``[out, in]``; NNX kernels are ``[in, out]``, hence the
transposes. Checkpoints converted from the original TensorFlow BERT name LayerNorm
parameters ``gamma``/``beta``; both spellings map to the same parameter.
"""

from __future__ import annotations

from w2s.models.bert.modeling import Config
from w2s.models.registry import KeyMap

# BertForSequenceClassification, BertForMaskedLM ... put the encoder under "bert."
PREFIXES = ("bert.",)

# (regex over the "/"-joined path, mesh axis per dim): Megatron-style tensor parallelism
# (column-parallel q/k/v and intermediate, row-parallel attention output and output) with
# the other dim over fsdp.
SHARDING = (
    (r"embeddings/word_embeddings/embedding", ("tp", "fsdp")),
    (r"embeddings/position_embeddings/embedding", (None, "fsdp")),
    (r"layers/\d+/attention/(query|key|value)/kernel", ("fsdp", "tp")),
    (r"layers/\d+/attention/(query|key|value)/bias", ("tp",)),
    (r"layers/\d+/attention/output/kernel", ("tp", "fsdp")),
    (r"layers/\d+/intermediate/kernel", ("fsdp", "tp")),
    (r"layers/\d+/intermediate/bias", ("tp",)),
    (r"layers/\d+/output/kernel", ("tp", "fsdp")),
)


def _transpose(w):
    return w.T


def _norm(hf: str, path: tuple) -> KeyMap:
    return {
        hf + ".weight": ((*path, "scale"), None),
        hf + ".bias": ((*path, "bias"), None),
        hf + ".gamma": ((*path, "scale"), None),
        hf + ".beta": ((*path, "bias"), None),
    }


def _linear(hf: str, path: tuple) -> KeyMap:
    return {
        hf + ".weight": ((*path, "kernel"), _transpose),
        hf + ".bias": ((*path, "bias"), None),
    }


def key_map(cfg: Config) -> KeyMap:
    e = ("embeddings",)
    m: KeyMap = {
        "embeddings.word_embeddings.weight": ((*e, "word_embeddings", "embedding"), None),
        "embeddings.position_embeddings.weight": ((*e, "position_embeddings", "embedding"), None),
        "embeddings.token_type_embeddings.weight": (
            (*e, "token_type_embeddings", "embedding"),
            None,
        ),
        **_norm("embeddings.LayerNorm", (*e, "layer_norm")),
    }
    for i in range(cfg.num_layers):
        p, k = f"encoder.layer.{i}.", ("layers", i)
        m |= _linear(p + "attention.self.query", (*k, "attention", "query"))
        m |= _linear(p + "attention.self.key", (*k, "attention", "key"))
        m |= _linear(p + "attention.self.value", (*k, "attention", "value"))
        m |= _linear(p + "attention.output.dense", (*k, "attention", "output"))
        m |= _norm(p + "attention.output.LayerNorm", (*k, "attention_norm"))
        m |= _linear(p + "intermediate.dense", (*k, "intermediate"))
        m |= _linear(p + "output.dense", (*k, "output"))
        m |= _norm(p + "output.LayerNorm", (*k, "output_norm"))
    return m
