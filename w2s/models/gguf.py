"""A llama-architecture GGUF file (llama.cpp's format) as a normal checkpoint folder.

Writes ``config.json`` (from the GGUF metadata), ``model.safetensors`` (every tensor
dequantised to float32 with the ``gguf`` package, under transformers' Llama names) and the
tokenizer files with the chat template, so ``load_lm`` / ``load_backbone`` read it like any
Hugging Face checkpoint. numpy only: no torch.

llama.cpp stores the q and k projections with each head's rows reordered for its interleaved
RoPE: the converter takes rows ``[0, D/2)`` and ``[D/2, D)`` of a head (the two halves that
transformers' ``rotate_half`` pairs) and interleaves them. ``unpermute`` undoes that, with the
query heads for q and the key/value heads for k.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# GGUF tensor name pattern -> transformers LlamaForCausalLM name
_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = {
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


class GGUFError(ValueError):
    """A GGUF file this converter cannot turn into a checkpoint; the message names it."""


def hf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _LAYER:
        return f"model.layers.{int(parts[1])}.{_LAYER[parts[2]]}"
    return None


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleaving of a q or k weight [heads * D, in]."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise GGUFError(f"{reader.path}: metadata lacks {key!r}")
        return default
    return field.contents()


def hf_config(reader) -> dict:
    """transformers' LlamaConfig fields from the GGUF metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"{reader.path}: architecture {arch!r}; only 'llama' is converted")
    names = {t.name for t in reader.tensors}
    heads = int(_field(reader, "llama.attention.head_count"))
    hidden = int(_field(reader, "llama.embedding_length"))
    vocab = int(_field(reader, "llama.vocab_size", len(_field(reader, "tokenizer.ggml.tokens"))))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_field(reader, "llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads)),
        "head_dim": int(_field(reader, "llama.rope.dimension_count", hidden // heads)),
        "max_position_embeddings": int(_field(reader, "llama.context_length")),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    for key, name in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("padding", "pad_token_id"),
    ):
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            cfg[name] = int(field.contents())
    return cfg


def tensors(reader, cfg: dict):
    """(transformers name, float32 array) for every tensor, dequantised and un-permuted."""
    from gguf.quants import dequantize

    for t in reader.tensors:
        name = hf_name(t.name)
        if name is None:
            if t.name == "rope_freqs.weight":  # scaled-RoPE factors: not supported
                raise GGUFError(f"{reader.path}: scaled RoPE (rope_freqs) is not supported")
            continue
        w = np.asarray(dequantize(t.data, t.tensor_type), np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists dims inner first
        w = w.reshape(shape)
        if name.endswith("q_proj.weight"):
            w = unpermute(w, cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            w = unpermute(w, cfg["num_key_value_heads"])
        yield name, np.ascontiguousarray(w)


def tokenizer(reader):
    """The fast tokenizer the GGUF metadata describes (model ``gpt2``: byte-level BPE), with
    control tokens (token type 3) as special tokens and the chat template.

    The pre-tokenizer splits digits one by one before the byte-level split, as llama.cpp's
    ``smollm`` / ``llama-bpe``-style pre-tokenizers do; it is refused for other ``tokenizer.
    ggml.pre`` values rather than guessed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    kind = _field(reader, "tokenizer.ggml.model")
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in ("smollm",):
        raise GGUFError(
            f"{reader.path}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
            "(only byte-level BPE with the smollm pre-tokenizer)"
        )
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]
    names = {}
    for key in ("bos", "eos", "unknown", "padding"):
        field = reader.fields.get(f"tokenizer.ggml.{key}_token_id")
        if field is not None:
            names[{"unknown": "unk", "padding": "pad"}.get(key, key) + "_token"] = tokens[
                int(field.contents())
            ]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    fast.add_special_tokens({"additional_special_tokens": specials})
    template = reader.fields.get("tokenizer.chat_template")
    if template is not None:
        fast.chat_template = template.contents()
    return fast


def convert(gguf_path: Path, out: Path) -> int:
    """Write the checkpoint folder ``out`` from ``gguf_path``; returns the number of files."""
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    cfg = hf_config(reader)
    weights = dict(tensors(reader, cfg))
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tokenizer(reader).save_pretrained(str(out))
    return sum(1 for p in out.iterdir() if p.is_file())
