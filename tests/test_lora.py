"""LoRA on tiny GPT-2, BERT and Qwen2 backbones (unrolled and scanned): the adapted model starts
equal to its base, only adapters and head move in training, merging gives the adapted logits,
and the optimizer holds state for the trainable part alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from w2s.config import TrainConfig
from w2s.models import Classifier, lora
from w2s.models.registry import family_for
from w2s.train.losses import step_loss
from w2s.train.step import make_train_step, optimizer

TINY = {
    "gpt2": {"model_type": "gpt2", "vocab_size": 64, "n_positions": 64, "n_embd": 32,
             "n_layer": 2, "n_head": 2},
    "bert": {"model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
             "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    "qwen2": {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
              "max_position_embeddings": 64, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False},
}
# per family: (targets, number of adapted projections in 2 layers)
EXPECTED = {
    "gpt2": {"attention": 2, "mlp": 2},
    "bert": {"attention": 4, "mlp": 2},
    "qwen2": {"attention": 4, "mlp": 3},
}
B, S = 4, 12


def _model(name: str, scan: bool = False, seed: int = 0, dtype=jnp.float32):
    fam = family_for(TINY[name]["model_type"], name)
    backbone = fam.module(fam.config_from_hf(TINY[name]), dtype=dtype,
                          param_dtype=dtype, scan_layers=scan, rngs=nnx.Rngs(seed))
    model = Classifier(backbone, 2, fam.pooling)
    # a non-zero head, so that logits depend on the backbone
    model.head.kernel[...] = jax.random.normal(jax.random.key(1), model.head.kernel.shape,
                                               model.head.kernel.dtype)
    return model, fam


def _batch(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(S // 2, S + 1, size=B)
    mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int32)
    labels = rng.integers(0, 2, size=B)
    return {
        "input_ids": jnp.asarray(rng.integers(1, 64, size=(B, S)) * mask, jnp.int32),
        "attention_mask": jnp.asarray(mask),
        "targets": jnp.asarray(np.eye(2, dtype=np.float32)[labels]),
        "labels": jnp.asarray(labels, jnp.int32),
        "weight": jnp.ones((B,), jnp.float32),
    }


def _logits(model, batch):
    return np.asarray(model(batch["input_ids"], batch["attention_mask"]))


def _adapted(name, scan=False, rank=4, groups=("attention", "mlp"), dtype=jnp.float32):
    model, fam = _model(name, scan, dtype=dtype)
    base = nnx.clone(model)
    n = lora.add(model.backbone, fam, rank=rank, alpha=8.0, groups=list(groups), seed=0)
    return base, model, n


def _flat(state) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", list(TINY))
def test_targets_and_init_equal_to_base(name, scan):
    for group, want in EXPECTED[name].items():
        _, _, n = _adapted(name, scan, groups=(group,))
        assert n == (want if scan else 2 * want)  # scanned: one stacked module per projection
    # B = 0: the same logits. The backbones (norms included) run in float64, so that the
    # comparison does not hinge on which float32 kernel XLA picks for each graph (in float32
    # the two differ by up to 4e-6 on some CPUs). Measured: exactly 0 on all six settings.
    with jax.enable_x64(True):
        base, model, _ = _adapted(name, scan, dtype=jnp.float64)
        batch = _batch()
        np.testing.assert_allclose(_logits(model, batch), _logits(base, batch), rtol=0,
                                   atol=1e-6)


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("name", list(TINY))
def test_training_moves_only_adapters_and_head_and_merge_keeps_the_logits(name, scan):
    base, model, _ = _adapted(name, scan)
    graphdef, params = nnx.split(model)
    labels = lora.trainable_labels(params)
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0)
    tx = optimizer(cfg, 1e-2, 10, labels)
    state = tx.init(params)
    n_train = sum(x.size for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels),
                                             strict=True) if lab == "train")
    n_state = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert n_state == 2 * n_train  # AdamW's two moments of the trainable part, nothing else
    step = jax.jit(make_train_step(graphdef, tx, step_loss()))
    before = _flat(params)
    for i in range(5):
        params, state, _ = step(params, state, _batch(i), jnp.float32(0.5))
    after = _flat(params)
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved and all("lora" in k or k.startswith("['head']") for k in moved), moved
    assert any("lora_b" in k for k in moved) and any("head" in k for k in moved)
    nnx.update(model, params)
    batch = _batch(9)
    adapted = _logits(model, batch)
    assert np.max(np.abs(adapted - _logits(base, batch))) > 1e-4  # the adapters did something
    merged = lora.merge(model)
    assert not lora.has_adapters(merged)
    # the merged model is the base architecture: its state has the base's paths and shapes
    assert jax.tree.structure(nnx.state(merged)) == jax.tree.structure(nnx.state(base))
    np.testing.assert_allclose(_logits(merged, batch), adapted, atol=1e-5)


def test_bad_targets_are_refused():
    model, fam = _model("gpt2")
    with pytest.raises(ValueError, match="unknown group"):
        lora.add(model.backbone, fam, rank=2, alpha=4.0, groups=["ffn"], seed=0)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora.add(model.backbone, fam, rank=0, alpha=4.0, groups=["mlp"], seed=0)


def test_lora_runs_end_to_end_with_a_live_teacher_from_merged_weights(tiny_env, tmp_path):
    """weak and strong with adapters; the w2s run distils live from the weak run's kept
    weights, which are merged: they load into the plain weak architecture and reproduce the
    weak run's own test predictions."""
    import json

    import pandas as pd
    import yaml

    from tests.conftest import compose, tiny_overrides
    from w2s.cli import run
    from w2s.data.tokenize import load_tokenizer, tokenize
    from w2s.models import load_classifier
    from w2s.train.loop import View, predict, restore_params

    run(compose(tiny_overrides(tiny_env, tmp_path, "train.lora.rank=4",
                               "train.lora.models=[weak,strong]", "loss=kd")))
    dirs = {k: next((tmp_path / "runs" / k).glob("*")) for k in ("weak", "ceiling", "w2s")}
    metrics = {k: json.loads((d / "metrics.json").read_text()) for k, d in dirs.items()}
    assert all(m["status"] == "done" for m in metrics.values())
    assert metrics["ceiling"]["accuracy"] > 0.85  # the toy task, learnt through adapters
    for m in metrics.values():  # adapters merged into the backbone: it moved
        assert m["backbone_change"] > 0
    assert yaml.safe_load((dirs["ceiling"] / "config.yaml").read_text())["train"]["lora"]["rank"] == 4

    plain = load_classifier(str(tiny_env["weak"]), 2, pooling="mean")
    restore_params(plain, dirs["weak"] / "weights")
    preds = pd.read_parquet(dirs["weak"] / "predictions.parquet")
    test = preds[preds.split == "test"]
    rows = {r["id"]: r["text"] for r in pd.read_json(tiny_env["data"], lines=True).to_dict("records")}
    tok = load_tokenizer(tiny_env["weak"])
    ids = tokenize([rows[i] for i in test["id"]], tok, 32).ids
    probs = predict(plain, View(ids, int(tok.pad_token_id)), 64, [32])
    np.testing.assert_allclose(probs, np.stack(test["probs"]), atol=1e-5)


def test_lora_checkpoints_hold_adapters_and_head_and_resume(tiny_env, tmp_path):
    """A LoRA run's training checkpoint has only the adapters, the head and their optimizer
    state; resuming from it rebuilds the frozen base and predicts as the run did."""
    import json

    import pandas as pd

    from tests.conftest import compose, tiny_overrides
    from w2s.cli import run

    extra = ("kinds=[ceiling]", "train.lora.rank=4", "train.early_stop.runs=[]",
             "train.epochs=2", "train.checkpoint_every=5", "train.keep_checkpoints=true")
    run(compose(tiny_overrides(tiny_env, tmp_path, *extra)))
    d = next((tmp_path / "runs" / "ceiling").glob("*"))
    (step_dir,) = [p for p in (d / "checkpoints").iterdir() if p.name.isdigit()]
    saved = json.loads(next(step_dir.rglob("_METADATA")).read_text())
    names = [k for k in saved["tree_metadata"] if k.startswith("('params'")]
    assert names and all("lora" in k or "'head'" in k for k in names), names
    before = pd.read_parquet(d / "predictions.parquet")
    m = json.loads((d / "metrics.json").read_text())
    (d / "metrics.json").write_text(json.dumps({**m, "status": "running"}))  # as if killed
    run(compose(tiny_overrides(tiny_env, tmp_path, *extra)))
    after = json.loads((d / "metrics.json").read_text())
    assert after["status"] == "done" and after["resumed_from"] == int(step_dir.name)
    np.testing.assert_allclose(np.stack(pd.read_parquet(d / "predictions.parquet").probs),
                               np.stack(before.probs), atol=1e-6)
