"""Scanned layers and per-layer remat: same numbers as the unrolled model and transformers,
one traced block whatever the depth, and remat that really frees activation memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers import max_diff_valid, right_padded, save_tiny, torch_hidden
from w2s.models import CheckpointError, load_backbone, load_classifier
from w2s.models.bert import Config as BertConfig
from w2s.models.bert import Model as BertModel
from w2s.models.registry import family_for
from w2s.models.sharding import make_mesh, path_str, spec_for
from w2s.models.stack import stacked_rules

torch = pytest.importorskip("torch")  # installed with the test extra; CI must not skip
transformers = pytest.importorskip("transformers")

LENGTHS = [9, 4, 6, 1]
TOL_TORCH = 1e-4  # the families' parity tolerance
TOL_LAYOUT = 1e-5  # scanned against unrolled: the same arithmetic, a different program

# name -> (transformers model class, config class, kwargs); three or more layers each
CASES = {
    # per-layer attention scale: the scanned block reads its index as a traced value
    "gpt2": (
        "GPT2Model",
        "GPT2Config",
        dict(
            vocab_size=97,
            n_positions=32,
            n_embd=32,
            n_layer=3,
            n_head=4,
            scale_attn_by_inverse_layer_idx=True,
        ),
    ),
    "bert": (
        "BertForSequenceClassification",
        "BertConfig",
        dict(
            vocab_size=97,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=48,
            max_position_embeddings=32,
        ),
    ),
    "qwen2": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            vocab_size=97,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.1,
        ),
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    made = {}
    for name, (model_cls, config_cls, kw) in CASES.items():
        config = getattr(transformers, config_cls)(**kw, bos_token_id=1, eos_token_id=1)
        made[name] = save_tiny(
            getattr(transformers, model_cls), config, tmp_path_factory.mktemp(name)
        )
    return made


def _layers(model):
    return model.h if hasattr(model, "h") else model.layers


def _forward(model, ids, mask):
    return nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))


@pytest.mark.parametrize("name", list(CASES))
def test_scanned_matches_transformers_and_unrolled(name, checkpoints):
    torch_model, d = checkpoints[name]
    unrolled = load_backbone(str(d))
    scanned = load_backbone(str(d), scan_layers=True)
    # the loader put layer i's tensors at index i of each stacked parameter
    per_layer = [nnx.state(block, nnx.Param) for block in _layers(unrolled)]
    stacked = nnx.state(_layers(scanned), nnx.Param)
    want = jax.tree.map(lambda *xs: np.stack(xs), *per_layer)
    for a, b in zip(jax.tree.leaves(stacked), jax.tree.leaves(want), strict=True):
        assert a.shape[0] == len(per_layer)
        np.testing.assert_array_equal(np.asarray(a), b)
    ids, mask = right_padded(97, LENGTHS, seed=5)
    got, ref = _forward(scanned, ids, mask), _forward(unrolled, ids, mask)
    assert max_diff_valid(got, torch_hidden(torch_model, ids, mask), mask) <= TOL_TORCH
    assert max_diff_valid(got, ref, mask) <= TOL_LAYOUT


def _grads(model, ids, mask):
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p):
        logits = nnx.merge(graphdef, p)(ids, mask)
        return jnp.mean(jnp.square(logits - jnp.arange(logits.shape[-1])))

    return jax.jit(jax.value_and_grad(loss))(params)


def _as_scanned(flat: dict, container: str) -> dict:
    """Unrolled leaves in the scanned layout: ``<container>/<i>/rest`` stacked at index ``i``."""
    out, layers = {}, {}
    for key, value in flat.items():
        parts = key.split("/")
        if container not in parts:
            out[key] = value
            continue
        j = parts.index(container)
        stacked_key = "/".join(parts[: j + 1] + parts[j + 2 :])
        layers.setdefault(stacked_key, {})[int(parts[j + 1])] = value
    return out | {k: np.stack([v[i] for i in sorted(v)]) for k, v in layers.items()}


@pytest.mark.parametrize("name", ["gpt2", "qwen2"])
def test_gradients_equal_for_every_layout_and_remat(name, checkpoints):
    """A classifier's loss and gradients: unrolled/scanned x remat none/full/dots all agree."""
    _, d = checkpoints[name]
    ids, mask = (jnp.asarray(x) for x in right_padded(97, LENGTHS, seed=6))
    container = "h" if name == "gpt2" else "layers"
    results = {}
    for scan in (False, True):
        for remat in ("none", "full", "dots"):
            model = load_classifier(str(d), 3, remat=remat, scan_layers=scan)
            model.head.kernel[...] = jax.random.normal(jax.random.key(0), model.head.kernel.shape)
            loss, grads = _grads(model, ids, mask)
            flat = {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
            results[scan, remat] = (float(loss), flat if scan else _as_scanned(flat, container))
    ref_loss, ref = results[False, "none"]
    assert max(np.abs(g).max() for g in ref.values()) > 1e-3  # gradients reach every layer
    for (scan, remat), (loss, grads) in results.items():
        assert loss == pytest.approx(ref_loss, rel=1e-6), (scan, remat)
        assert sorted(grads) == sorted(ref)
        worst = max(np.abs(g - ref[k]).max() / np.abs(ref[k]).max() for k, g in grads.items())
        assert worst <= 1e-5, (scan, remat)  # measured: at most 9e-7


def _dot_count(depth: int, scan: bool) -> int:
    cfg = BertConfig(97, 32, depth, 4, 48, 32)
    graphdef, params = nnx.split(BertModel(cfg, scan_layers=scan, rngs=nnx.Rngs(0)))
    ids = jnp.ones((2, 8), jnp.int32)

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(ids, ids))

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params)
    return str(jaxpr).count("dot_general")


def test_scan_traces_one_block_whatever_the_depth():
    """Compile work follows the traced program: scanned, it does not grow with the layer count."""
    assert _dot_count(2, scan=True) == _dot_count(8, scan=True)
    assert _dot_count(8, scan=False) > 3 * _dot_count(2, scan=False)


def _temp_bytes(remat: str, scan: bool) -> int:
    cfg = BertConfig(97, 64, 8, 4, 256, 128)
    graphdef, params = nnx.split(BertModel(cfg, remat=remat, scan_layers=scan, rngs=nnx.Rngs(0)))
    ids = jnp.ones((16, 128), jnp.int32)

    def loss(p):
        return jnp.mean(jnp.square(nnx.merge(graphdef, p)(ids, ids)))

    compiled = jax.jit(jax.grad(loss)).lower(params).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_with_scanned_layers_frees_activation_memory():
    """XLA's own count of the backward pass's temporaries (8 layers, batch 16 x 128).

    Measured on CPU: none 205 MiB, dots 66 MiB, full 32 MiB. (Unrolled, XLA:CPU schedules
    every recomputation up front and the saving vanishes: 195 MiB for all three policies.)
    """
    none, dots, full = (_temp_bytes(r, scan=True) for r in ("none", "dots", "full"))
    assert full < dots < none
    assert full <= 0.3 * none


def test_scanned_sharding_rules_add_an_unsplit_layer_axis(checkpoints):
    """Every stacked parameter shards as its layer-0 parameter does, behind a whole layer axis."""
    mesh = make_mesh(data=1, fsdp=1, tp=1, devices=jax.devices()[:1])
    for name, (_, d) in checkpoints.items():
        family = family_for(name, name)  # the case names are model types
        specs = {}
        for scan in (False, True):
            model = load_backbone(str(d), scan_layers=scan)
            rules = stacked_rules(family.sharding) if scan else family.sharding
            specs[scan] = {
                path_str(p): tuple(spec_for(p, v.get_value().shape, rules, mesh))
                for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            }
        container = "h" if name == "gpt2" else "layers"
        split = 0
        for key, spec in specs[True].items():
            parts = key.split("/")
            if parts[0] != container:
                assert spec == specs[False][key], key
                continue
            one_layer = specs[False]["/".join([container, "0", *parts[1:]])]
            assert spec == ((None, *one_layer) if one_layer else ()), key  # () = replicated
            split += any(a is not None for a in spec)
        assert split >= 4, name  # the rules really matched stacked paths


def test_scanned_load_names_a_missing_layer_tensor(checkpoints, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, d = checkpoints["gpt2"]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((d / "config.json").read_text())
    tensors = load_file(d / "model.safetensors")
    del tensors["h.1.mlp.c_fc.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 1 tensors: \['h.1.mlp.c_fc.weight'\]"):
        load_backbone(str(bad), scan_layers=True)


def test_unknown_remat_refused():
    with pytest.raises(ValueError, match="train.remat 'some' unknown; use none, full, dots"):
        BertModel(BertConfig(97, 32, 2, 4, 48, 32), remat="some", rngs=nnx.Rngs(0))
