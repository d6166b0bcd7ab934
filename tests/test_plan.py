"""Dry-run memory plan against references that do not share its arithmetic.

- Parameter counts: published sizes (GPT-2 small, Qwen2.5-7B).
- Parameter, gradient and optimizer bytes: the real arrays of an instantiated tiny model and of
  its optax state, and the buffer sizes XLA reports for the compiled train step.
- Activations: XLA's temporaries of the compiled forward + backward pass of tiny GPT-2, BERT
  and Qwen2 models on CPU. These are not the quantity the plan's formula (Korthikanti et al.
  2022) counts: XLA fuses some of what the formula keeps, keeps a backward-pass workspace the
  formula leaves out, and the formula counts dropout masks that w2s does not have. So the test
  asks for a band around XLA's figure, and for the same growth when the batch, the sequence
  or the depth doubles, and when each layer is rematerialised.

Measured on CPU (jax 0.10.2, hidden 64, 4 heads, 2 layers, batch 4, seq 128, float32), XLA's
temporaries over the plan's activations:

    gpt2 1.18, bert 1.18, qwen2 1.29 (SwiGLU: three MLP matrices)

and 1.13-1.48 over every other shape compared (batch 8, seq 256, 4 layers, remat full). XLA's
growth over the plan's growth when one thing changes (gpt2; qwen2 in brackets):

    batch 4 -> 8    1.18 (1.18)       seq 128 -> 256                    1.12 (1.09)
    layers 2 -> 4   0.96 (0.96)       remat full (scanned) over none    1.07 (1.15)

The plan under-counts XLA:CPU by 13-48 %, inside the asserted band of 0.9-1.9x. A plan that
drops the float32 factor of two, counts it twice, drops the layer count, the attention term or
the batch leaves that band; one that ignores remat leaves the growth band of 0.75-1.4x (0.56).

Only the CPU backend is compared, and only float32: XLA:CPU holds bfloat16 activations at
nearly float32 size (0.96x), so the plan's halving for 16-bit compute cannot be checked here.
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


@functools.cache
def xla_grad(family: str, b=B, s=S, layers=LAYERS, remat="none"):
    """XLA's memory analysis of the train step's loss and gradient, compiled for CPU (from
    abstract parameters: compiling needs only their shapes)."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: _module(family, layers, remat)))

    def loss(p, batch):
        return batch_loss(graphdef, p, batch, jnp.float32(0.5), step_loss())

    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return grad.lower(params, _batch(b, s)).compile().memory_analysis()


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
    g = xla_grad("gpt2")
    n_out = len(jax.tree.leaves(params)) + 2
    grads = g.output_size_in_bytes - 4 - B * 2 * 4 - head
    assert 0 <= grads - p["grads"] <= 8 * n_out
    # the whole step: XLA holds the inputs, its temporaries (gradients, activations, workspace)
    # and any output not written in place; measured 1.12x the plan's total (bert 1.12,
    # qwen2 1.22)
    held = mem.argument_size_in_bytes + mem.temp_size_in_bytes
    held += mem.output_size_in_bytes - mem.alias_size_in_bytes
    assert 0.9 <= held / p["total"] <= 1.9, (held, p["total"])


def _act_ratio(root, family, **kw) -> float:
    """XLA's temporaries of the gradient over the plan's activations, at one shape."""
    return xla_grad(family, **kw).temp_size_in_bytes / _plan(root, family, **kw)["activations"]


@pytest.mark.parametrize("family", ["gpt2", "bert", "qwen2"])
def test_activations_within_a_band_of_xla_temporaries(ckpt_root, family):
    """Measured 1.18 (gpt2, bert) and 1.29 (qwen2); over every shape below, 1.13-1.48.
    Without the float32 factor of two the plan would sit at 2.4-3.0, counting it twice at
    0.6-0.7, without the layer count at 2.4 or more."""
    assert 0.9 <= _act_ratio(ckpt_root, family) <= 1.9


# What doubles, with XLA's growth over the plan's growth as measured for gpt2, and what a plan
# with that term missing would give instead.
GROWTH = [
    ({"b": 2 * B}, "batch: 1.18 (per-device batch ignored: 2.36)"),
    ({"s": 2 * S}, "seq: 1.12 (no attention s^2 term: 1.73)"),
    ({"layers": 2 * LAYERS}, "layers: 0.96 (layer count ignored: 1.92)"),
    ({"remat": "full"}, "remat full over none: 1.07 (remat ignored: 0.56)"),
]


@pytest.mark.parametrize(("kw", "note"), GROWTH, ids=[n.split(":")[0] for _, n in GROWTH])
def test_activations_grow_like_xla_temporaries(ckpt_root, kw, note):
    """The plan's growth when one dimension changes follows XLA's within 0.75-1.4x."""
    plan_growth = (
        _plan(ckpt_root, "gpt2", **kw)["activations"] / _plan(ckpt_root, "gpt2")["activations"]
    )
    xla_growth = xla_grad("gpt2", **kw).temp_size_in_bytes / xla_grad("gpt2").temp_size_in_bytes
    assert 0.75 <= xla_growth / plan_growth <= 1.4, (note, plan_growth, xla_growth)
    assert 0.9 <= _act_ratio(ckpt_root, "gpt2", **kw) <= 1.9, note  # the band holds there too
