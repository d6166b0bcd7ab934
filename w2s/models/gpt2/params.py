"""HF GPT-2 tensor names -> NNX parameter paths, and how those parameters shard.

GPT-2's ``Conv1D`` stores weights as ``[in, out]``, which is already the NNX kernel layout;
only the fused q/k/v tensors are reshaped to ``[hidden, 3, hidden]`` (a view, no copy).
"""

from __future__ import annotations

from w2s.models.gpt2.modeling import Config
from w2s.models.registry import KeyMap

# GPT2LMHeadModel / GPT2ForSequenceClassification put the backbone under "transformer."
PREFIXES = ("transformer.",)

# (regex over the "/"-joined path, mesh axis per dim): Megatron-style tensor parallelism
# (column-parallel q/k/v and c_fc, row-parallel c_proj) with the other dim over fsdp.
SHARDING = (
    (r"wte/embedding", ("tp", "fsdp")),
    (r"wpe/embedding", (None, "fsdp")),
    (r"h/\d+/attn/c_attn/kernel", ("fsdp", None, "tp")),
    (r"h/\d+/attn/c_attn/bias", (None, "tp")),
    (r"h/\d+/attn/c_proj/kernel", ("tp", "fsdp")),
    (r"h/\d+/mlp/c_fc/kernel", ("fsdp", "tp")),
    (r"h/\d+/mlp/c_fc/bias", ("tp",)),
    (r"h/\d+/mlp/c_proj/kernel", ("tp", "fsdp")),
)


def key_map(cfg: Config) -> KeyMap:
    h = cfg.hidden_size

    def qkv_kernel(w):
        return w.reshape(h, 3, h)

    def qkv_bias(b):
        return b.reshape(3, h)

    m: KeyMap = {
        "wte.weight": (("wte", "embedding"), None),
        "wpe.weight": (("wpe", "embedding"), None),
        "ln_f.weight": (("ln_f", "scale"), None),
        "ln_f.bias": (("ln_f", "bias"), None),
    }
    for i in range(cfg.num_layers):
        p, k = f"h.{i}.", ("h", i)
        m |= {
            p + "ln_1.weight": ((*k, "ln_1", "scale"), None),
            p + "ln_1.bias": ((*k, "ln_1", "bias"), None),
            p + "attn.c_attn.weight": ((*k, "attn", "c_attn", "kernel"), qkv_kernel),
            p + "attn.c_attn.bias": ((*k, "attn", "c_attn", "bias"), qkv_bias),
            p + "attn.c_proj.weight": ((*k, "attn", "c_proj", "kernel"), None),
            p + "attn.c_proj.bias": ((*k, "attn", "c_proj", "bias"), None),
            p + "ln_2.weight": ((*k, "ln_2", "scale"), None),
            p + "ln_2.bias": ((*k, "ln_2", "bias"), None),
            p + "mlp.c_fc.weight": ((*k, "mlp", "c_fc", "kernel"), None),
            p + "mlp.c_fc.bias": ((*k, "mlp", "c_fc", "bias"), None),
            p + "mlp.c_proj.weight": ((*k, "mlp", "c_proj", "kernel"), None),
            p + "mlp.c_proj.bias": ((*k, "mlp", "c_proj", "bias"), None),
        }
    return m
