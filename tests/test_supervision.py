"""Supervision beyond fixed labels: live KD (same and different tokenizers), its identity with
offline xent, several weak supervisors, confidence filtering and strong-to-strong rounds."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from tests.conftest import compose, tiny_overrides
from w2s.models import load_classifier
from w2s.train.batches import pad_rows
from w2s.train.losses import step_loss
from w2s.train.step import batch_loss


def _random_head(model, seed):
    k = jax.random.key(seed)
    model.head.kernel[...] = jax.random.normal(k, model.head.kernel.shape) * 0.5
    return model


def _encode(model_dir, texts, length):
    from w2s.data import load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = [np.asarray(tok(t)["input_ids"][:length], np.int32) for t in texts]
    return pad_rows(ids, np.arange(len(ids)), length, tok.pad_token_id)


@pytest.mark.parametrize("teacher_kind", ["weak", "weak_chars"])
def test_live_fkl_equals_offline_xent_minus_entropy(tiny_env, teacher_kind):
    """alpha=0, T=1, fkl: live loss = xent to the cached soft labels - H(teacher); same grads."""
    texts = ["w1 good w2", "w3 bad", "w4 w5 w6 good w7 w8", "bad w9"]
    teacher = _random_head(load_classifier(str(tiny_env[teacher_kind]), 2, pooling="mean"), 0)
    student = _random_head(load_classifier(str(tiny_env["strong"]), 2, pooling="mean"), 1)
    s_ids, s_mask = _encode(tiny_env["strong"], texts, 16)
    t_ids, t_mask = _encode(tiny_env[teacher_kind], texts, 32)
    t_graphdef, t_params = nnx.split(teacher)
    graphdef, params = nnx.split(student)
    weight = np.array([1, 1, 1, 0], np.float32)  # a filler row must not count
    cached = np.asarray(jax.nn.softmax(teacher(t_ids, t_mask), -1))  # the offline soft labels
    batch = {"input_ids": s_ids, "attention_mask": s_mask, "teacher_input_ids": t_ids,
             "teacher_attention_mask": t_mask, "weight": weight, "labels": np.zeros(4, np.int32),
             "targets": cached}

    from omegaconf import OmegaConf

    from w2s.config import LossConfig

    kd = step_loss(OmegaConf.structured(LossConfig(name="kd", supervision="live")))

    def live(p):
        return batch_loss(graphdef, p, batch, 0.3, kd,
                          teacher=(t_graphdef, 1.0), teacher_params=t_params)[0]

    def offline(p):
        return batch_loss(graphdef, p, batch, 0.3, step_loss())[0]

    entropy = -np.sum(cached * np.log(cached), -1)
    mean_entropy = float(np.sum(entropy * weight) / weight.sum())
    assert float(live(params)) == pytest.approx(float(offline(params)) - mean_entropy, abs=1e-6)
    g_live, g_off = jax.grad(live)(params), jax.grad(offline)(params)
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g_live, g_off))
    assert max(diffs) <= 1e-5
    assert max(jax.tree.leaves(jax.tree.map(lambda a: float(jnp.max(jnp.abs(a))), g_live))) > 1e-3


def _run(overrides):
    from w2s.cli import run

    return run(compose(overrides))


def _metrics(results, kind):
    return [json.loads(p.read_text()) for p in sorted(results.glob(f"runs/{kind}/*/metrics.json"))]


def _b_probs(results, kind, run_id) -> pd.Series:
    df = pd.read_parquet(results / "runs" / kind / run_id / "predictions.parquet")
    return df[df.split == "b"].set_index("id").probs


def test_two_weak_supervisors_mean_and_filtering(tiny_env, tmp_path):
    extra = (f"extra_weak=[{{name:tiny-chars,path:{tiny_env['weak_chars']},pooling:mean,lr:0.01}}]",
             "filter_q=0.5")
    _run(tiny_overrides(tiny_env, tmp_path, *extra))
    weak = {m["weak_model"]: m for m in _metrics(tmp_path, "weak")}
    assert set(weak) == {"tiny-weak", "tiny-chars"}
    (w2s,) = _metrics(tmp_path, "w2s")
    assert w2s["n_train"] == 80 and "ens2_mean_q0.5" in w2s["loss"]
    a = _b_probs(tmp_path, "weak", weak["tiny-weak"]["run_id"])
    b = _b_probs(tmp_path, "weak", weak["tiny-chars"]["run_id"])
    soft = pd.read_parquet(tmp_path / "runs" / "w2s" / w2s["run_id"] / "predictions.parquet")
    soft = soft[soft.split == "b"].set_index("id").weak_soft
    mean = (np.stack(a.loc[soft.index]) + np.stack(b.loc[soft.index])) / 2
    np.testing.assert_allclose(np.stack(soft), mean, atol=1e-6)
