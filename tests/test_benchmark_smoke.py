"""The throughput benchmark's core runs end to end on a tiny BERT (two steps per trainer)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def _load_benchmark():
    """The script is not a package module; load it by path (registered: dataclasses need it)."""
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_all_trainers_report_positive_throughput():
    tt = _load_benchmark()
    tiny = dict(
        tt.MINILM,
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    spec = tt.Spec(name="tiny", hf=tiny, batch=4, seq=8, steps=2, repeats=1, min_len_frac=0.5)
    res = tt.run_benchmark(spec)
    assert set(res["trainers"]) == {"jax", "torch", "anchor"}
    for figures in res["trainers"].values():
        assert figures["step_s_median"] > 0
        assert figures["examples_per_s"] > 0
        assert figures["tokens_per_s"] > 0
    assert res["ratios"]["jax/torch"] > 0 and res["ratios"]["jax/anchor"] > 0
    assert "jax/torch" in tt.format_result(res)
