"""Behaviour shared by every family: clear loading errors, bf16, sharding, classifier pooling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import right_padded, save_tiny
from w2s.models import CheckpointError, Classifier, load_backbone, pool

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [7, 3, 5, 1]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tiny GPT-2 (bare keys) and a tiny BERT, both shardable by fsdp=4, tp=2."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    root = tmp_path_factory.mktemp("common")
    gpt2 = GPT2Config(
        vocab_size=97,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=1,
        eos_token_id=1,
    )
    bert = BertConfig(
        vocab_size=98,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return {
        "gpt2": save_tiny(GPT2Model, gpt2, root / "gpt2")[1],
        "bert": save_tiny(BertModel, bert, root / "bert")[1],
    }


def forward(model, ids, mask):
    return nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))


# ---------------------------------------------------------------- errors


def test_error_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_backbone(str(tmp_path))


def test_error_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(
        ValueError, match=r"'t5' is not supported; supported model types: bert, gpt2"
    ):
        load_backbone(str(tmp_path))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint with its tensors passed through ``edit(dict) -> dict``."""
    from safetensors.numpy import load_file, save_file

    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(edit(load_file(src / "model.safetensors")), dst / "model.safetensors")
    return dst


def test_error_missing_tensors(ckpts, tmp_path):
    gone = ["wpe.weight", "h.0.attn.c_proj.bias", "h.1.ln_1.weight"]
    d = _rewrite(
        ckpts["gpt2"], tmp_path / "m", lambda t: {k: v for k, v in t.items() if k not in gone}
    )
    with pytest.raises(CheckpointError, match="lacks 3 tensors") as e:
        load_backbone(str(d))
    assert all(k in str(e.value) for k in gone)  # one error naming them all


def test_error_shape_mismatch(ckpts, tmp_path):
    d = _rewrite(ckpts["gpt2"], tmp_path / "s", lambda t: {**t, "wpe.weight": t["wpe.weight"][:8]})
    with pytest.raises(
        CheckpointError, match=r"'wpe.weight' has shape \(8, 32\).*expects \(32, 32\)"
    ):
        load_backbone(str(d))


def test_error_offline_hub_id(tmp_path):
    """``HF_HUB_OFFLINE=1`` is read when huggingface_hub is imported, hence a fresh process."""
    code = textwrap.dedent("""
        from w2s.models import CheckpointError, load_backbone
        try:
            load_backbone("gpt2")
        except CheckpointError as e:
            print("ERROR:", e)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    env.pop("HF_HUB_CACHE", None)
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERROR: could not get 'gpt2' from the Hugging Face hub" in run.stdout
    assert "pass a local checkpoint directory" in run.stdout


# ---------------------------------------------------------------- bf16


@pytest.mark.parametrize("family", ["gpt2", "bert"])
@pytest.mark.parametrize("param_dtype", ["float32", "bfloat16"])
def test_bf16_close_to_f32(ckpts, family, param_dtype):
    """bf16 compute (f32 or bf16 parameters) stays close to f32 at non-pad positions.

    Measured (tiny 4-layer random GPT-2/BERT and real MiniLM-L6, this code, CPU): relative
    Frobenius error ||h_bf16 - h_f32|| / ||h_f32|| of 0.005-0.010 and worst per-token relative
    error 0.006-0.014, about two to three bf16 roundings (2^-8 = 0.0039). Tolerances are twice
    the worst measurement: 0.02 overall, 0.03 per token.
    """
    ids, mask = right_padded(97, LENGTHS, seed=7)
    ref = np.asarray(forward(load_backbone(str(ckpts[family])), ids, mask), np.float64)
    model = load_backbone(str(ckpts[family]), dtype=param_dtype, compute_dtype="bfloat16")
    leaves = nnx.state(model, nnx.Param)
    assert {x.dtype for x in jax.tree.leaves(leaves)} == {jnp.dtype(param_dtype)}
    out = forward(model, ids, mask)
    assert out.dtype == jnp.bfloat16
    valid = mask.astype(bool)
    a, r = np.asarray(out, np.float64)[valid], ref[valid]
    assert np.linalg.norm(a - r) / np.linalg.norm(r) <= 0.02
    assert (np.linalg.norm(a - r, axis=-1) / np.linalg.norm(r, axis=-1)).max() <= 0.03


# ---------------------------------------------------------------- sharding

SHARDED = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tests.helpers import max_diff_valid, right_padded
    from w2s.models import load_backbone
    from w2s.models.sharding import make_mesh

    assert jax.device_count() == 8, jax.devices()
    mesh = make_mesh(data=1, fsdp=4, tp=2)
    fwd = nnx.jit(lambda m, i, a: m(i, a))
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        ids, mask = right_padded(97, [7, 3, 5, 1], seed=11)
        ref = fwd(load_backbone(path), jnp.asarray(ids), jnp.asarray(mask))
        model = load_backbone(path, mesh=mesh)
        data = NamedSharding(mesh, P("data", None))
        got = fwd(model, jax.device_put(ids, data), jax.device_put(mask, data))
        q = model.h[0].attn.c_attn.kernel if name == "gpt2" else model.layers[0].attention.query.kernel
        fc = model.h[1].mlp.c_fc.kernel if name == "gpt2" else model.layers[1].intermediate.kernel
        scanned = load_backbone(path, mesh=mesh, scan_layers=True)
        got_s = fwd(scanned, jax.device_put(ids, data), jax.device_put(mask, data))
        q_s = scanned.h.attn.c_attn.kernel if name == "gpt2" else scanned.layers.attention.query.kernel
        out[name] = {
            "diff": max_diff_valid(got, ref, mask),
            "scanned_diff": max_diff_valid(got_s, ref, mask),
            "scanned_q_spec": [a for a in q_s[...].sharding.spec],
            "scanned_q_shards": len({str(s.index) for s in q_s[...].addressable_shards}),
            "q_spec": [a for a in q[...].sharding.spec],
            "q_shards": len({str(s.index) for s in q[...].addressable_shards}),
            "fc_spec": [a for a in fc[...].sharding.spec],
            "devices": len(got.sharding.device_set),
        }
    print("RESULT", json.dumps(out))
""")


def test_sharded_forward_matches(ckpts):
    """fsdp=4 x tp=2 over 8 simulated CPU devices, in a fresh process (device count is fixed
    when JAX starts): same hidden states as the unsharded model, and parameters really split,
    with the layers unrolled or scanned (stacked parameters keep their layer axis whole)."""
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    paths = json.dumps({k: str(v) for k, v in ckpts.items()})
    run = subprocess.run(
        [sys.executable, "-c", SHARDED, paths],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    res = json.loads(run.stdout.split("RESULT", 1)[1])
    assert res["gpt2"]["q_spec"] == ["fsdp", None, "tp"] and res["gpt2"]["q_shards"] == 8
    assert res["bert"]["q_spec"] == ["fsdp", "tp"] and res["bert"]["q_shards"] == 8
    assert res["gpt2"]["scanned_q_spec"] == [None, "fsdp", None, "tp"]
    assert res["bert"]["scanned_q_spec"] == [None, "fsdp", "tp"]
    for r in res.values():
        assert r["fc_spec"] == ["fsdp", "tp"]
        assert r["devices"] == 8
        assert r["scanned_q_shards"] == 8
        assert r["diff"] <= 1e-5 and r["scanned_diff"] <= 1e-5, res


# ---------------------------------------------------------------- classifier and pooling


def test_pooling_by_hand():
    hidden = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(pool(hidden, mask, "cls"), hidden[:, 0])
    np.testing.assert_array_equal(
        pool(hidden, mask, "last"), jnp.stack([hidden[0, 2], hidden[1, 0]])
    )
    np.testing.assert_allclose(
        pool(hidden, mask, "mean"), jnp.stack([hidden[0, :3].mean(0), hidden[1, 0]])
    )
    # pad positions never leak into mean or last, whatever they hold
    poisoned = hidden.at[0, 3].set(1e6).at[1, 1:].set(-1e6)
    for how in ("last", "mean"):
        np.testing.assert_array_equal(pool(poisoned, mask, how), pool(hidden, mask, how))
    with pytest.raises(ValueError, match="pooling 'max' unknown"):
        pool(hidden, mask, "max")


class _Fixed(nnx.Module):
    """A stand-in backbone that returns given hidden states."""

    def __init__(self, hidden):
        self.hidden = nnx.Variable(hidden)
        self.config = type("C", (), {"hidden_size": hidden.shape[-1]})()

    def __call__(self, input_ids, attention_mask):
        return self.hidden[...]


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_classifier_pooling(pooling):
    hidden = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 3)), jnp.bfloat16)
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    clf = Classifier(_Fixed(hidden), num_labels=3, pooling=pooling)
    logits = clf(jnp.zeros((2, 4), jnp.int32), mask)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 3)
    np.testing.assert_array_equal(logits, 0.0)  # zero-initialised head: uniform predictions
    clf.head.kernel[...] = jnp.eye(3)
    want = pool(hidden, mask, pooling).astype(jnp.float32)
    np.testing.assert_allclose(clf(jnp.zeros((2, 4), jnp.int32), mask), want, rtol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        Classifier(_Fixed(hidden), num_labels=3, pooling="first")
