"""Parameters stored in bf16 still train: the low-precision update rules against float32, by
hand on one weight and through the real train step on a tiny BERT; bf16 compute follows float32.

Tolerances (also in the README): with ``param_dtype=bfloat16`` the backbone's relative change
after 100 AdamW steps at lr 1e-5 is within 10 % of the float32 run's (master, kahan; stochastic
rounding: its component along float32's displacement), where plain bf16 updates move it by less
than half; with bf16 compute and float32 parameters the loss curve of 50 steps stays within
0.05 (absolute, per step) of float32's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2s.config import TrainConfig
from w2s.models import Classifier
from w2s.models.registry import family_for
from w2s.train.losses import step_loss
from w2s.train.precision import MODES, low_precision, stochastic_round_bf16
from w2s.train.step import make_train_step, optimizer

# -- one weight, by hand ------------------------------------------------------------------------


def _descend(tx, w0: float, steps: int, grad: float = 1.0) -> float:
    params = {"w": jnp.asarray(w0, jnp.bfloat16)}
    state = tx.init(params)
    for _ in range(steps):
        updates, state = tx.update({"w": jnp.asarray(grad, jnp.bfloat16)}, state, params)
        params = optax.apply_updates(params, updates)
    assert params["w"].dtype == jnp.bfloat16
    return float(params["w"])


def test_plain_bf16_sgd_loses_small_updates():
    # 0.02 in bf16 has a spacing of 2**-13 = 1.2e-4: a 1e-5 step rounds back to the same value
    assert _descend(optax.sgd(1e-5), 0.02, 100) == float(jnp.asarray(0.02, jnp.bfloat16))


@pytest.mark.parametrize("mode", MODES)
def test_each_rule_keeps_the_small_updates(mode):
    w0 = float(jnp.asarray(0.02, jnp.bfloat16))
    want = w0 - 100 * 1e-5  # the float32 trajectory
    got = _descend(low_precision(optax.sgd(1e-5), mode), w0, 100)
    ulp = 2.0**-13
    # master and kahan are within one rounding of the exact value; stochastic rounding is
    # unbiased, its error a random walk of 100 steps of at most one ulp
    assert abs(got - want) <= (ulp if mode != "stochastic" else 4 * ulp), (got, want)


def test_stochastic_rounding_is_unbiased_and_hits_only_neighbours():
    x = jnp.full((20000,), 1.0 + 0.3 * 2.0**-7, jnp.float32)  # 30 % of the way to the next bf16
    r = stochastic_round_bf16(x, jax.random.key(0)).astype(jnp.float32)
    assert set(np.unique(np.asarray(r)).tolist()) == {1.0, 1.0 + 2.0**-7}
    assert float(jnp.mean(r == 1.0 + 2.0**-7)) == pytest.approx(0.3, abs=0.015)
    exact = jnp.asarray([1.0, -2.5, 0.0], jnp.float32)  # representable values stay
    np.testing.assert_array_equal(stochastic_round_bf16(exact, jax.random.key(1)), exact)


def test_float32_parameters_pass_through_unchanged():
    params = {"w": jnp.asarray([0.5, -1.0], jnp.float32)}
    grads = {"w": jnp.asarray([0.1, 0.2], jnp.float32)}
    inner = optax.adamw(1e-3)
    want, _ = inner.update(grads, inner.init(params), params)
    for mode in MODES:
        tx = low_precision(inner, mode)
        got, _ = tx.update(grads, tx.init(params), params)
        np.testing.assert_array_equal(got["w"], want["w"])


def test_fp16_parameters_refuse_stochastic_rounding():
    with pytest.raises(ValueError, match="bfloat16 only"):
        low_precision(optax.sgd(1.0), "stochastic").init({"w": jnp.zeros(2, jnp.float16)})


# -- the real train step on a tiny BERT -----------------------------------------------------------

TINY_BERT = {
    "model_type": "bert", "vocab_size": 64, "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 128, "max_position_embeddings": 64,
}
B, S = 8, 16


def _classifier(compute_dtype=jnp.float32) -> Classifier:
    fam = family_for("bert", "bert")
    backbone = fam.module(
        fam.config_from_hf(TINY_BERT), dtype=compute_dtype, param_dtype=jnp.float32,
        rngs=nnx.Rngs(0),
    )
    return Classifier(backbone, 2, fam.pooling)


def _batches(n: int) -> list[dict]:
    """Label 1 iff token 7 occurs: learnable, so the loss curve goes somewhere."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(8, 64, size=(B, S))
        labels = rng.integers(0, 2, size=B)
        ids[labels == 1, rng.integers(0, S)] = 7
        out.append({
            "input_ids": jnp.asarray(ids, jnp.int32),
            "attention_mask": jnp.ones((B, S), jnp.int32),
            "targets": jnp.asarray(np.eye(2, dtype=np.float32)[labels]),
            "labels": jnp.asarray(labels, jnp.int32),
            "weight": jnp.ones((B,), jnp.float32),
        })
    return out


def _train(graphdef, params, tx, steps: int):
    step = jax.jit(make_train_step(graphdef, tx, step_loss()))
    state, losses = tx.init(params), []
    for batch in _batches(steps):
        params, state, stats = step(params, state, batch, jnp.float32(0.5))
        losses.append(float(stats["loss"]))
    return params, np.array(losses)


def _flat(tree) -> np.ndarray:
    """The backbone's parameters (the head left out) as one float64 vector."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    keep = [x for p, x in flat if "head" not in jax.tree_util.keystr(p)]
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in keep])


@pytest.fixture(scope="module")
def float32_run():
    """100 AdamW steps at lr 1e-5 in float32 from the bf16-rounded initial weights, so that
    only the precision of the updates differs from the bf16 runs."""
    graphdef, params = nnx.split(_classifier())
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    p0 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0)
    after, _ = _train(graphdef, p0, optimizer(cfg, 1e-5, 100), 100)
    return graphdef, p16, _flat(after) - _flat(p0), float(np.linalg.norm(_flat(p0)))


def _relative_change(delta: np.ndarray, norm0: float) -> float:
    return float(np.linalg.norm(delta)) / norm0


@pytest.mark.parametrize("mode", MODES)
def test_bf16_parameters_move_like_float32(float32_run, mode):
    """Measured: master and kahan 0.92 of float32's relative change (the stored weights are
    float32's rounded: a weight's 100 steps are a few of its bf16 spacings); stochastic
    rounding 1.00 along float32's displacement, with a norm of 2.6x from rounding noise."""
    graphdef, p16, delta32, norm0 = float32_run
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0, low_precision_update=mode)
    after, _ = _train(graphdef, p16, optimizer(cfg, 1e-5, 100), 100)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(after))
    delta = _flat(after) - _flat(p16)
    if mode == "stochastic":  # unbiased: the component along float32's move is float32's move
        ratio = float(delta @ delta32 / (delta32 @ delta32))
    else:
        ratio = _relative_change(delta, norm0) / _relative_change(delta32, norm0)
    assert abs(ratio - 1) <= 0.10, (mode, ratio)


def test_plain_bf16_updates_barely_move_the_backbone(float32_run):
    """What the rules fix: optax's own update of bf16 parameters, without them."""
    graphdef, p16, delta32, norm0 = float32_run
    plain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))
    after, _ = _train(graphdef, p16, plain, 100)
    delta = _flat(after) - _flat(p16)
    ratio = _relative_change(delta, norm0) / _relative_change(delta32, norm0)
    assert ratio < 0.5, ratio


def test_bf16_compute_follows_the_float32_loss_curve():
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0)
    curves = {}
    for name, dtype in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        graphdef, params = nnx.split(_classifier(dtype))
        _, curves[name] = _train(graphdef, params, optimizer(cfg, 1e-3, 50), 50)
    assert curves["float32"][-10:].mean() < 0.8 * curves["float32"][:5].mean()  # it learns
    assert np.max(np.abs(curves["bfloat16"] - curves["float32"])) <= 0.05
