"""Dry-run memory plan against references that do not share its arithmetic.

- Parameter counts: published sizes (GPT-2 small, Qwen2.5-7B).
- Parameter, gradient and optimizer bytes: the real arrays of an instantiated tiny model and of
  its optax state, and the buffer sizes XLA reports for the compiled train step.
- Totals: XLA's compiled memory analysis (peak = arguments + outputs + temporaries - aliased)
  of the real, donated train step on CPU, on the MiniLM shape with unrolled and scanned
  layers, full remat and LoRA, and a tiny Qwen2 (GQA, SwiGLU). Measured plan / XLA (jax
  0.10.2, batch 8 x 128, float32; ``benchmarks/plan_vs_xla.py``):

      MiniLM  unrolled 1.02   scanned 1.00   scanned + remat 1.04
              LoRA r=8 scanned 1.00   LoRA r=8 scanned + remat 1.05
      tiny Qwen2 scanned 1.03

  A plan without the residuals sits near 0.5 of XLA, one that ignores remat at 1.5, one that
  gives LoRA full gradients and optimizer state at 1.6 (MiniLM): all outside the 15 % band.
  Where the plan misses (listed in the README): unrolled LoRA on MiniLM (0.75) and unrolled
  GPT-2-medium (1.18), whose XLA schedules keep other buffers than the residuals, and
  GPT-2-medium with remat (0.85).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from w2s.config import ModelConfig, TrainConfig
from w2s.models import Classifier
from w2s.models.registry import family_for
from w2s.plan import plan
from w2s.train.losses import step_loss
from w2s.train.step import batch_loss, make_train_step, optimizer

MESH1 = {"data": 1, "fsdp": 1, "tp": 1}
H, HEADS, LAYERS, B, S = 64, 4, 2, 4, 128
TINY = {  # hidden 64, 4 heads, 2 layers; a small vocabulary so activations dominate
    "gpt2": {
        "model_type": "gpt2",
        "vocab_size": 64,
        "n_positions": 512,
        "n_embd": H,
        "n_layer": LAYERS,
        "n_head": HEADS,
        "layer_norm_epsilon": 1e-5,
        "activation_function": "gelu_new",
    },
    "bert": {
        "model_type": "bert",
        "vocab_size": 64,
        "hidden_size": H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 4 * H,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    },
    "qwen2": {
        "model_type": "qwen2",
        "vocab_size": 64,
        "hidden_size": H,
        "intermediate_size": 4 * H,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    },
}
DEPTH_KEY = {"gpt2": "n_layer", "bert": "num_hidden_layers", "qwen2": "num_hidden_layers"}


def _cfgs(path, param_dtype="float32", **train):
    model = OmegaConf.structured(ModelConfig(name=path, path=path, param_dtype=param_dtype))
    return model, OmegaConf.structured(TrainConfig(**train))


def nbytes(tree) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


# -- published sizes and bytes by hand ---------------------------------------------------------


def test_gpt2_parameter_count_and_bytes_by_hand():
    model, train = _cfgs("gpt2", optimizer="adamw", batch_size=8)
    p = plan(model, train, MESH1, seq_len=128)
    assert p["n_params"] == 124_439_808  # GPT-2 small, as published (no separate LM head)
    assert p["params"] == p["grads"] == 124_439_808 * 4
    # AdamW: two f32 moments per parameter, plus scalar step counts
    assert 2 * 124_439_808 * 4 <= p["optimizer"] <= 2 * 124_439_808 * 4 + 64
    assert p["per_device_batch"] == 8


def test_fsdp_divides_what_it_shards():
    model, train = _cfgs("Qwen/Qwen2.5-7B", param_dtype="bfloat16", batch_size=32)
    one = plan(model, train, MESH1, seq_len=512)
    eight = plan(model, train, {"data": 1, "fsdp": 8, "tp": 1}, seq_len=512)
    assert 7.0e9 < one["n_params"] < 7.2e9  # Qwen2.5-7B without its LM head
    assert one["params"] == one["n_params"] * 2
    # every large matrix is split eight ways; only norms and biases stay whole
    assert one["params"] / 8 <= eight["params"] < one["params"] / 8 * 1.001
    assert eight["per_device_batch"] == 4


# -- tiny models: the plan against real arrays and XLA's compiled memory analysis ---------------


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plan_ckpts")


def _ckpt(root: Path, family: str, layers: int) -> str:
    """A checkpoint directory holding only config.json: all the plan reads."""
    d = root / f"{family}-{layers}"
    if not d.is_dir():
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**TINY[family], DEPTH_KEY[family]: layers}))
    return str(d)


def _plan(root, family, b=B, s=S, layers=LAYERS, remat="none"):
    model, train = _cfgs(_ckpt(root, family, layers), batch_size=b, remat=remat)
    return plan(model, train, MESH1, seq_len=s)


def _module(family: str, layers: int, remat: str = "none") -> Classifier:
    hf = {**TINY[family], DEPTH_KEY[family]: layers}
    fam = family_for(hf["model_type"], family)
    backbone = fam.module(
        fam.config_from_hf(hf),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat=remat,
        scan_layers=remat != "none",  # remat is planned as scanned layers (see print_plan)
        rngs=nnx.Rngs(0),
    )
    return Classifier(backbone, 2, fam.pooling)


@functools.cache
def _real(family: str):
    """The classifier with real, initialised arrays (default depth, no remat)."""
    return _module(family, LAYERS)


def _batch(b: int, s: int) -> dict:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=b).astype(np.int32)
    return {
        "input_ids": jnp.asarray(rng.integers(1, 64, size=(b, s)), jnp.int32),
        "attention_mask": jnp.ones((b, s), jnp.int32),
        "targets": jnp.asarray(np.eye(2, dtype=np.float32)[labels]),
        "labels": jnp.asarray(labels),
        "weight": jnp.ones((b,), jnp.float32),
    }


@pytest.mark.parametrize("family", ["gpt2", "bert", "qwen2"])
def test_param_and_optimizer_bytes_are_the_real_arrays(ckpt_root, family):
    """The backbone's initialised parameters and its real optax state, byte for byte."""
    p = _plan(ckpt_root, family)
    params = nnx.state(_real(family).backbone, nnx.Param)
    opt = optimizer(TrainConfig(batch_size=B), 1e-5, 1000).init(params)
    assert p["n_params"] == sum(x.size for x in jax.tree.leaves(params))
    assert p["params"] == p["grads"] == nbytes(params)
    assert p["optimizer"] == nbytes(opt)


def test_bytes_match_xla_buffers_of_the_compiled_step(ckpt_root):
    """What XLA allocates for the compiled train step and gradient (GPT-2 shape)."""
    p = _plan(ckpt_root, "gpt2")
    graphdef, params = nnx.split(_real("gpt2"))
    tx = optimizer(TrainConfig(batch_size=B), 1e-5, 1000)
    opt, batch = tx.init(params), _batch(B, S)
    step = jax.jit(make_train_step(graphdef, tx, step_loss()), donate_argnums=(0, 1))
    mem = step.lower(params, opt, batch, jnp.float32(0.5)).compile().memory_analysis()
    # The plan covers the backbone; the classifier head (2h + 2 float32 numbers, plus its two
    # AdamW moments) is the only other state. XLA drops the unused step_frac argument.
    head = (2 * H + 2) * 4
    state = p["params"] + p["optimizer"] + 3 * head
    assert mem.argument_size_in_bytes in (state + nbytes(batch), state + nbytes(batch) + 4)
    assert mem.alias_size_in_bytes == state  # donated params and optimizer state come back
    # gradients: one output per parameter, plus the loss and the logits; XLA:CPU adds an 8-byte
    # index entry per output buffer of the result tuple (measured: exactly that)
    graphdef_a, params_a = nnx.split(nnx.eval_shape(lambda: _module("gpt2", LAYERS)))

    def loss(q, batch):
        return batch_loss(graphdef_a, q, batch, jnp.float32(0.5), step_loss())

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    g = grad.lower(params_a, _batch(B, S)).compile().memory_analysis()
    n_out = len(jax.tree.leaves(params)) + 2
    grads = g.output_size_in_bytes - 4 - B * 2 * 4 - head
    assert 0 <= grads - p["grads"] <= 8 * n_out


MINILM = {  # all-MiniLM-L6-v2's shape
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
}
TOTALS = [  # (shape, train settings, LoRA rank): plan / XLA as measured, in the module doc
    ("minilm", {}, 0),
    ("minilm", {"scan_layers": True}, 0),
    ("minilm", {"scan_layers": True, "remat": "full"}, 0),
    ("minilm", {"scan_layers": True}, 8),
    ("minilm", {"scan_layers": True, "remat": "full"}, 8),
    ("qwen2", {"scan_layers": True}, 0),
]


@pytest.mark.parametrize(("shape", "train", "rank"), TOTALS,
                         ids=[f"{s}-{'-'.join(map(str, t.values())) or 'unrolled'}-r{r}"
                              for s, t, r in TOTALS])
def test_totals_within_15_percent_of_xla(ckpt_root, shape, train, rank):
    """The dry run's total against XLA's peak for the compiled, donated train step."""
    from w2s.config import LoRAConfig
    from w2s.plan import xla_step_bytes

    d = ckpt_root / f"total-{shape}"
    if not d.is_dir():
        d.mkdir()
        (d / "config.json").write_text(json.dumps(MINILM if shape == "minilm" else TINY[shape]))
    model, cfg = _cfgs(str(d), batch_size=8, lora=LoRAConfig(rank=rank), **train)
    p = plan(model, cfg, MESH1, seq_len=128, use_lora=rank > 0)
    peak = xla_step_bytes(model, cfg, 128, use_lora=rank > 0)["peak"]
    assert 0.85 <= p["total"] / peak <= 1.15, (p["total"] / 2**20, peak / 2**20)
