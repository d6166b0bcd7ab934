"""Dry-run memory plan: parameter counts against published sizes, bytes by hand."""

from __future__ import annotations

from omegaconf import OmegaConf

from w2s.config import ModelConfig, TrainConfig
from w2s.plan import plan

MESH1 = {"data": 1, "fsdp": 1, "tp": 1}


def _cfgs(path, param_dtype="float32", **train):
    model = OmegaConf.structured(ModelConfig(name=path, path=path, param_dtype=param_dtype))
    return model, OmegaConf.structured(TrainConfig(**train))


def test_gpt2_parameter_count_and_bytes_by_hand():
    model, train = _cfgs("gpt2", optimizer="adamw", batch_size=8)
    p = plan(model, train, MESH1, seq_len=128)
    assert p["n_params"] == 124_439_808  # GPT-2 small, as published (no separate LM head)
    assert p["params"] == p["grads"] == 124_439_808 * 4
    # AdamW: two f32 moments per parameter, plus scalar step counts
    assert 2 * 124_439_808 * 4 <= p["optimizer"] <= 2 * 124_439_808 * 4 + 64
    # activations (16-bit formula, f32 compute doubles it): 12 layers * s*b*h*(34 + 5*a*s/h)
    s, b, h, a = 128, 8, 768, 12
    assert p["activations"] == 12 * s * b * h * (34 + 5 * a * s / h) * 2


def test_fsdp_divides_what_it_shards():
    model, train = _cfgs("Qwen/Qwen2.5-7B", param_dtype="bfloat16", batch_size=32)
    one = plan(model, train, MESH1, seq_len=512)
    eight = plan(model, train, {"data": 1, "fsdp": 8, "tp": 1}, seq_len=512)
    assert 7.0e9 < one["n_params"] < 7.2e9  # Qwen2.5-7B without its LM head
    assert one["params"] == one["n_params"] * 2
    # every large matrix is split eight ways; only norms and biases stay whole
    assert one["params"] / 8 <= eight["params"] < one["params"] / 8 * 1.001
    assert eight["per_device_batch"] == 4
