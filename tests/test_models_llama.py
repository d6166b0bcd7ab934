"""Llama family (llama, qwen2, mistral): parity with transformers on tiny random checkpoints."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import max_diff_valid, right_padded, save_tiny, torch_hidden
from w2s.models import load_backbone, load_classifier, pool
from w2s.models.llama import FAMILY, Config, Model
from w2s.models.sharding import make_mesh, path_str, spec_for

torch = pytest.importorskip("torch")  # installed with the test extra; CI must not skip
transformers = pytest.importorskip("transformers")

LENGTHS = [9, 4, 6, 1]
TOL_F32 = 1e-4
# bf16 compute on f32 params, 2-3 layers: measured max |bf16 - f32| / max |f32| = 0.9e-2 .. 1.7e-2
# (1-2 bf16 ulps) over the valid positions of the four checkpoints below; 4e-2 leaves headroom.
TOL_BF16_REL = 4e-2

# initializer_range 0.1 (HF default 0.02) sharpens attention, so a RoPE mistake (wrong theta,
# interleaved pairs) moves hidden states by > 0.1 instead of ~ 1e-3: far above TOL_F32.
SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    initializer_range=0.1,
)

# name -> (model class, config class, config kwargs)
CASES = {
    "llama_causal_gqa_untied": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            num_hidden_layers=3,
        ),
    ),
    "llama_base_mha_bias": (
        "LlamaModel",
        "LlamaConfig",
        dict(
            num_attention_heads=4,
            num_key_value_heads=4,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            attention_bias=True,
        ),
    ),
    "qwen2_causal_tied": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=True,
        ),
    ),
    "mistral_base_gqa_headdim": (
        "MistralModel",
        "MistralConfig",
        dict(num_attention_heads=4, num_key_value_heads=1, head_dim=8, sliding_window=4096),
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (torch model, checkpoint dir), built once for the module."""
    made = {}
    for name, (model_cls, config_cls, kw) in CASES.items():
        config = getattr(transformers, config_cls)(**{**SMALL, **kw})
        model_cls = getattr(transformers, model_cls)
        made[name] = save_tiny(model_cls, config, tmp_path_factory.mktemp(name))
    return made


def _ckpt_keys(ckpt) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), framework="numpy") as f:
        return list(f.keys())


@pytest.mark.parametrize("name", list(CASES))
def test_parity_f32(name, checkpoints, caplog):
    model, ckpt = checkpoints[name]
    ids, mask = right_padded(128, LENGTHS)
    with caplog.at_level(logging.INFO, logger="w2s.models"):
        backbone = load_backbone(str(ckpt))
    ours = backbone(jnp.asarray(ids), jnp.asarray(mask))
    assert ours.shape == (len(LENGTHS), max(LENGTHS), 64) and ours.dtype == jnp.float32
    diff = max_diff_valid(ours, torch_hidden(model, ids, mask), mask)
    print(f"\n{name}: max |jax - torch| = {diff:.2e}")
    assert diff <= TOL_F32

    keys = _ckpt_keys(ckpt)
    causal = "ForCausalLM" in CASES[name][0]
    assert all(k.startswith(("model.", "lm_head.")) for k in keys) == causal
    assert ("lm_head.weight" in keys) == (name == "llama_causal_gqa_untied")  # tied: not saved
    if "lm_head.weight" in keys:
        assert "lm_head.weight" in caplog.text  # listed as unused, not loaded


def test_qwen2_and_llama_biases_map(checkpoints):
    """Qwen2: q/k/v biased, o not; Llama attention_bias: all four; nowhere an MLP bias."""
    qwen = load_backbone(str(checkpoints["qwen2_causal_tied"][1])).layers[0].self_attn
    assert qwen.q_proj.bias is not None and qwen.v_proj.bias is not None
    assert qwen.o_proj.bias is None
    llama = load_backbone(str(checkpoints["llama_base_mha_bias"][1])).layers[0]
    assert llama.self_attn.o_proj.bias is not None and llama.mlp.up_proj.bias is None


def test_classifier_last_pooling_qwen2(checkpoints):
    model, ckpt = checkpoints["qwen2_causal_tied"]
    ids, mask = right_padded(128, LENGTHS, seed=1)
    clf = load_classifier(str(ckpt), num_labels=3)
    assert clf.pooling == "last"
    pooled = pool(clf.backbone(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask), "last")
    want = torch_hidden(model, ids, mask)[np.arange(len(LENGTHS)), np.asarray(LENGTHS) - 1]
    diff = float(np.abs(np.asarray(pooled) - want).max())
    print(f"\nqwen2 classifier last pooling: max |jax - torch[len-1]| = {diff:.2e}")
    assert diff <= TOL_F32
    logits = clf(jnp.asarray(ids), jnp.asarray(mask))
    assert logits.shape == (len(LENGTHS), 3) and not np.asarray(logits).any()  # zero-init head


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_compute_close_to_f32(name, checkpoints):
    _, ckpt = checkpoints[name]
    ids, mask = (jnp.asarray(a) for a in right_padded(128, LENGTHS))
    ref = np.asarray(load_backbone(str(ckpt))(ids, mask))
    mixed = load_backbone(str(ckpt), "float32", compute_dtype="bfloat16")
    assert mixed.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    out = mixed(ids, mask)
    assert out.dtype == jnp.bfloat16
    rel = max_diff_valid(out.astype(jnp.float32), ref, np.asarray(mask))
    rel /= float(np.abs(ref[np.asarray(mask, bool)]).max())
    print(f"\n{name}: bf16 compute max rel error = {rel:.2e}")
    assert rel <= TOL_BF16_REL


def test_layer_override_matches_truncated_torch(checkpoints, caplog):
    model, ckpt = checkpoints["llama_causal_gqa_untied"]  # 3 layers saved
    ids, mask = right_padded(128, LENGTHS, seed=2)
    with caplog.at_level(logging.INFO, logger="w2s.models"):
        ours = load_backbone(str(ckpt), overrides={"num_hidden_layers": 1})
    assert len(ours.layers) == 1
    assert "model.layers.2.mlp.up_proj.weight" in caplog.text  # reported unused
    short = transformers.LlamaForCausalLM.from_pretrained(ckpt, num_hidden_layers=1).eval()
    want = torch_hidden(short, ids, mask)
    diff = max_diff_valid(ours(jnp.asarray(ids), jnp.asarray(mask)), want, mask)
    print(f"\nnum_hidden_layers=1 override: max |jax - torch| = {diff:.2e}")
    assert diff <= TOL_F32
    assert max_diff_valid(want, torch_hidden(model, ids, mask), mask) > 1e-2  # really truncated


BASE = dict(**SMALL, num_attention_heads=4, model_type="llama")


def test_config_reads_both_rope_layouts():
    legacy = Config.from_hf({**BASE, "rope_theta": 500000.0, "rope_scaling": None})
    v5 = Config.from_hf({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert legacy.rope_theta == v5.rope_theta == 500000.0
    assert Config.from_hf(BASE).rope_theta == 10000.0
    assert Config.from_hf(BASE).head_dim == 16 and Config.from_hf(BASE).num_key_value_heads == 4


@pytest.mark.parametrize(
    "rope, kind",
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "llama3"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "linear"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
    ],
)
def test_scaled_rope_is_refused(rope, kind):
    with pytest.raises(ValueError, match=f"RoPE type '{kind}'"):
        Config.from_hf({**BASE, **rope})


def test_sliding_window():
    mistral = {**BASE, "model_type": "mistral", "sliding_window": 4}
    assert Config.from_hf(mistral).sliding_window == 4
    assert Config.from_hf({**mistral, "sliding_window": None}).sliding_window is None
    qwen = {**BASE, "model_type": "qwen2", "sliding_window": 4, "max_window_layers": 28}
    assert Config.from_hf({**qwen, "use_sliding_window": False}).sliding_window is None
    assert Config.from_hf({**qwen, "use_sliding_window": True}).sliding_window is None  # < 28
    assert (
        Config.from_hf({**qwen, "use_sliding_window": True, "max_window_layers": 1}).sliding_window
        == 4
    )
    ids, mask = (jnp.asarray(a) for a in right_padded(128, [4, 2]))
    model = Model(Config.from_hf(mistral), rngs=nnx.Rngs(0))
    assert model(ids, mask).shape == (2, 4, 64)  # S <= window: exact, the window never bites
    ids, mask = (jnp.asarray(a) for a in right_padded(128, [5, 2]))
    with pytest.raises(ValueError, match="sliding window 4"):
        model(ids, mask)


def test_bad_activation_refused():
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        Config.from_hf({**BASE, "hidden_act": "gelu"})


def test_sharding_rules_cover_every_parameter():
    cfg = Config.from_hf({**BASE, "model_type": "qwen2", "num_key_value_heads": 2})
    model = nnx.eval_shape(lambda: Model(cfg, rngs=nnx.Rngs(0)))
    mesh = make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    specs = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        spec = spec_for(path, var.get_value().shape, FAMILY.sharding, mesh)
        assert len(spec) == var.get_value().ndim, path_str(path)  # a rule matched
        specs[path_str(path)] = tuple(spec)
    assert specs["layers/1/self_attn/q_proj/kernel"] == ("fsdp", "tp")
    assert specs["layers/1/self_attn/k_proj/bias"] == ("tp",)
    assert specs["layers/1/self_attn/o_proj/kernel"] == ("tp", "fsdp")
    assert specs["layers/1/mlp/down_proj/kernel"] == ("tp", "fsdp")
    assert specs["layers/0/mlp/gate_proj/kernel"] == ("fsdp", "tp")
    assert specs["embed_tokens/embedding"] == ("tp", "fsdp")
    assert specs["norm/scale"] == specs["layers/0/input_layernorm/scale"] == (None,)
