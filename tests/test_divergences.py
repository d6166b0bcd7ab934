"""Divergences against hand arithmetic in numpy, finite differences, temperature and hard labels."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s.train.divergences import DIVERGENCES, PROB_FLOOR, divergence, entropy, temper


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_divergence(z: np.ndarray, q: np.ndarray, kind: str, t: float) -> np.ndarray:
    """Reference written directly from the definitions, one row at a time."""
    out = []
    for zr, qr in zip(z.astype(np.float64), q.astype(np.float64), strict=True):
        p = np_softmax(zr / t)
        if kind == "fkl":
            v = sum(qi * math.log(qi / pi) for qi, pi in zip(qr, p, strict=True) if qi > 0)
        elif kind == "rkl":
            v = sum(pi * math.log(pi / max(qi, PROB_FLOOR)) for qi, pi in zip(qr, p, strict=True))
        elif kind == "js":
            m = 0.5 * (p + qr)
            v = 0.5 * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m, strict=True))
            v += 0.5 * sum(qi * math.log(qi / mi) for qi, mi in zip(qr, m, strict=True) if qi > 0)
        else:
            v = 0.5 * sum(abs(pi - qi) for qi, pi in zip(qr, p, strict=True))
        out.append(v * t**2)
    return np.array(out)


# 3 x 2 with one hard teacher row (exact 0 and 1)
Z = np.array([[1.0, -0.5], [0.2, 0.3], [-1.5, 2.0]], np.float32)
Q = np.array([[0.7, 0.3], [0.0, 1.0], [0.5, 0.5]], np.float32)

# student p = (1/4, 3/4) at the temperature below, teacher (1/2, 1/2): closed forms
LITERAL = {
    "fkl": 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75),
    "rkl": 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5),
    "js": 0.5 * (0.25 * math.log(0.25 / 0.375) + 0.75 * math.log(0.75 / 0.625))
    + 0.5 * (0.5 * math.log(0.5 / 0.375) + 0.5 * math.log(0.5 / 0.625)),
    "tv": 0.25,
}


@partial(jax.jit, static_argnames="scale_by_t2")
def all_kinds(z, q, t, scale_by_t2=True):
    """Every kind at once, temperature traced: [len(DIVERGENCES), B]."""
    return jnp.stack([divergence(z, q, k, t, scale_by_t2=scale_by_t2) for k in DIVERGENCES])


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_closed_form(t):
    # logits (0, T ln 3) give p = (1/4, 3/4) at temperature T; the result carries T**2
    z, q = jnp.array([[0.0, t * math.log(3.0)]]), jnp.array([[0.5, 0.5]])
    want = np.array([[LITERAL[k]] for k in DIVERGENCES])
    np.testing.assert_allclose(all_kinds(z, q, t), want * t**2, rtol=1e-5)
    np.testing.assert_allclose(all_kinds(z, q, t, scale_by_t2=False), want, rtol=1e-5)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_matches_numpy(t):
    got = all_kinds(jnp.asarray(Z), jnp.asarray(Q), t)  # jitted, temperature traced
    assert got.shape == (4, 3) and got.dtype == jnp.float32
    for k, kind in enumerate(DIVERGENCES):
        np.testing.assert_allclose(got[k], np_divergence(Z, Q, kind, t), rtol=1e-5, atol=1e-6)
    rng = np.random.default_rng(0)  # 3 classes
    z3 = rng.normal(size=(4, 3)).astype(np.float32)
    q3 = np_softmax(rng.normal(size=(4, 3))).astype(np.float32)
    got3 = all_kinds(jnp.asarray(z3), jnp.asarray(q3), t)
    for k, kind in enumerate(DIVERGENCES):
        np.testing.assert_allclose(got3[k], np_divergence(z3, q3, kind, t), rtol=1e-5, atol=1e-6)
    # eager, static temperature: same numbers
    np.testing.assert_allclose(
        divergence(jnp.asarray(Z), jnp.asarray(Q), "js", t), got[2], rtol=1e-6
    )


def test_basic_properties():
    q = jnp.array([[0.2, 0.8], [0.6, 0.4]])
    z = jnp.log(q)  # student equal to teacher at T = 1
    np.testing.assert_allclose(all_kinds(z, q, 1.0), 0.0, atol=1e-6)
    # fkl = CE(q, p) - H(q)
    z2 = jnp.array([[0.3, -1.0], [2.0, 0.5]])
    ce = -jnp.sum(q * jax.nn.log_softmax(z2), -1)
    np.testing.assert_allclose(divergence(z2, q, "fkl"), ce - entropy(q), rtol=1e-6)
    np.testing.assert_allclose(entropy(jnp.array([[0.0, 1.0], [0.5, 0.5]])), [0.0, math.log(2)])


def test_temper_is_tempered_softmax_and_frozen():
    logits = jnp.array([[1.0, 3.0], [0.0, -2.0]])
    np.testing.assert_allclose(temper(logits, 2.0), np_softmax(np.asarray(logits) / 2), rtol=1e-6)
    g = jax.grad(lambda x: temper(x, 2.0)[0, 0])(logits)
    np.testing.assert_array_equal(g, 0.0)
    # no gradient reaches the teacher through the divergence either
    gq = jax.grad(lambda q: divergence(logits, q, "js").sum())(jnp.array([[0.3, 0.7], [0.5, 0.5]]))
    np.testing.assert_array_equal(gq, 0.0)


def test_hard_teacher_and_saturated_student_are_finite():
    z = jnp.array([[60.0, -60.0], [-60.0, 60.0], [0.0, 0.0]])
    q = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    val, jac = jax.jit(lambda x: (all_kinds(x, q, 2.0), jax.jacrev(all_kinds)(x, q, 2.0)))(z)
    assert np.all(np.isfinite(val)) and np.all(np.isfinite(jac))
    for k, kind in enumerate(DIVERGENCES):
        want = np_divergence(np.asarray(z), np.asarray(q), kind, 2.0)
        np.testing.assert_allclose(val[k], want, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fkl, rkl, js, tv"):
        divergence(jnp.zeros((1, 2)), jnp.ones((1, 2)) / 2, "kl")
    with pytest.raises(ValueError, match="temperature"):
        divergence(jnp.zeros((1, 2)), jnp.ones((1, 2)) / 2, "fkl", 0.0)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_gradients_match_finite_differences(t):
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        z = rng.normal(size=(4, 3))
        q = jnp.asarray(np.concatenate([np_softmax(rng.normal(size=(3, 3))), [[0.0, 1.0, 0.0]]]))
        w = jnp.asarray(rng.uniform(0.5, 1.5, size=4))

        def f(x):  # one output per kind, so one compilation covers them all
            return jnp.stack([jnp.sum(w * divergence(x, q, k, t)) for k in DIVERGENCES])

        jac = np.asarray(jax.jit(jax.jacrev(f))(jnp.asarray(z)))
        assert jac.dtype == np.float64
        np.testing.assert_allclose(jac, fd_jac(f, z), rtol=1e-6, atol=1e-8)


def fd_jac(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of f at x, every coordinate in one vmapped call: [out..., *x.shape]."""
    eye = np.eye(x.size).reshape(x.size, *x.shape) * h
    vals = np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(np.concatenate([x + eye, x - eye]))))
    d = (vals[: x.size] - vals[x.size :]) / (2 * h)  # [x.size, out...]
    return np.moveaxis(d, 0, -1).reshape(*d.shape[1:], *x.shape)
