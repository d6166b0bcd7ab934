"""GPT-2 family: parity with transformers' PyTorch GPT-2 on tiny random checkpoints."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from tests.helpers import max_diff_valid, right_padded, save_tiny, torch_hidden
from w2s.models import Classifier, load_backbone, load_classifier
from w2s.models.gpt2 import Config, Model

TOL = 1e-4
LENGTHS = [7, 3, 5, 1]


def tiny_configs():
    from transformers import GPT2Config

    ids = {"bos_token_id": 1, "eos_token_id": 1}
    return {
        # saved as GPT2LMHeadModel: tied lm_head, keys under "transformer."
        "lm": GPT2Config(
            vocab_size=97,
            n_positions=32,
            n_embd=32,
            n_layer=2,
            n_head=4,
            layer_norm_epsilon=1e-5,
            **ids,
        ),
        # saved as GPT2Model: no prefix; other eps, heads, positions, n_inner, scaling flag
        "base": GPT2Config(
            vocab_size=101,
            n_positions=16,
            n_embd=48,
            n_layer=3,
            n_head=3,
            n_inner=72,
            layer_norm_epsilon=1e-3,
            scale_attn_by_inverse_layer_idx=True,
            **ids,
        ),
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from transformers import GPT2LMHeadModel, GPT2Model

    root = tmp_path_factory.mktemp("gpt2")
    cfgs = tiny_configs()
    return {
        "lm": save_tiny(GPT2LMHeadModel, cfgs["lm"], root / "lm", seed=0),
        "base": save_tiny(GPT2Model, cfgs["base"], root / "base", seed=1),
    }


def forward(model, ids, mask):
    return nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))


def keys(d):
    with safe_open(str(d / "model.safetensors"), framework="numpy") as h:
        return list(h.keys())


def test_checkpoint_layouts(ckpts):
    """The two checkpoints exercise both key layouts (prefixed, tied head; bare)."""
    lm_keys, base_keys = keys(ckpts["lm"][1]), keys(ckpts["base"][1])
    assert all(k.startswith("transformer.") for k in lm_keys)
    assert "lm_head.weight" not in lm_keys  # tied to wte, not stored
    assert not any(k.startswith("transformer.") for k in base_keys)


@pytest.mark.parametrize("name", ["lm", "base"])
def test_parity(ckpts, name):
    torch_model, d = ckpts[name]
    model = load_backbone(str(d))
    assert model.config.num_layers == torch_model.config.n_layer
    ids, mask = right_padded(model.config.vocab_size, LENGTHS, seed=3)
    out = forward(model, ids, mask)
    assert out.shape == (4, 7, model.config.hidden_size) and out.dtype == jnp.float32
    assert max_diff_valid(out, torch_hidden(torch_model, ids, mask), mask) <= TOL


def test_truncated_layers(ckpts):
    """``num_hidden_layers`` overrides GPT-2's ``n_layer`` and keeps the first layers."""
    from transformers import GPT2Model

    _, d = ckpts["base"]
    model = load_backbone(str(d), overrides={"num_hidden_layers": 1})
    assert len(model.h) == 1
    ref = GPT2Model.from_pretrained(d, n_layer=1).eval()
    ids, mask = right_padded(model.config.vocab_size, LENGTHS, seed=4)
    assert max_diff_valid(forward(model, ids, mask), torch_hidden(ref, ids, mask), mask) <= TOL


def test_last_pooling_with_token_zero_inside(ckpts):
    """Token 0 ("!") inside the text and as padding: ``last`` pools at length - 1 anyway."""
    torch_model, d = ckpts["lm"]
    ids, mask = right_padded(97, LENGTHS, seed=5)
    ids[0, 2] = ids[2, 1] = ids[2, 3] = 0  # real "!" tokens before the row's end
    lengths = mask.sum(1)
    first_zero = [int(np.argmax(row == 0)) for row in ids]
    assert (
        first_zero[0] < lengths[0] - 1 and first_zero[2] < lengths[2] - 1
    )  # a pad-id search fails

    clf = load_classifier(str(d), num_labels=32)
    assert isinstance(clf, Classifier) and clf.pooling == "last"
    clf.head.kernel[...] = jnp.eye(32)  # identity head: logits are the pooled vector
    pooled = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(clf, jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_hidden(torch_model, ids, mask)[np.arange(4), lengths - 1]
    assert np.abs(pooled - ref).max() <= TOL


def test_random_init_and_config():
    """A randomly initialised module runs, and ``from_hf`` reads GPT-2's own key names."""
    cfg = Config.from_hf(tiny_configs()["base"].to_dict())
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (48, 3, 3, 72)
    assert (cfg.max_positions, cfg.eps, cfg.activation) == (16, 1e-3, "gelu_new")
    m = Model(cfg, rngs=nnx.Rngs(0))
    ids, mask = right_padded(cfg.vocab_size, LENGTHS)
    assert np.isfinite(np.asarray(forward(m, ids, mask))).all()
    with pytest.raises(ValueError, match="n_positions"):
        m(np.zeros((1, 17), np.int32), np.ones((1, 17), np.int32))


def test_config_json_roundtrip(ckpts):
    hf = json.loads((ckpts["lm"][1] / "config.json").read_text())
    assert Config.from_hf(hf).num_layers == hf["n_layer"]
