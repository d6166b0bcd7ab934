"""Token-level divergences against float64 numpy written from the definitions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s.lm.divergences import TOKEN_DIVERGENCES, per_token, token_divergence


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl(a, b):
    return np.sum(a * np.log(a / b), -1)


def reference(s, t, kind, temp, beta, skew):
    """From probabilities, in float64: q teacher, p student."""
    p, q = _softmax(s / temp), _softmax(t / temp)
    if kind == "fkl":
        d = _kl(q, p)
    elif kind == "rkl":
        d = _kl(p, q)
    elif kind == "js":
        m = beta * q + (1 - beta) * p
        d = beta * _kl(q, m) + (1 - beta) * _kl(p, m)
    elif kind == "tv":
        d = 0.5 * np.abs(p - q).sum(-1)
    elif kind == "skew_fkl":
        d = _kl(q, skew * q + (1 - skew) * p)
    else:
        d = _kl(p, skew * p + (1 - skew) * q)
    return d * temp**2


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(3, 5, 11)) * 2
    t = rng.normal(size=(3, 5, 11)) * 2
    mask = (rng.random((3, 5)) < 0.6).astype(np.int32)
    mask[0, 0] = 1
    return s, t, mask


@pytest.mark.parametrize("temp", [1.0, 2.5])
@pytest.mark.parametrize("kind", TOKEN_DIVERGENCES)
def test_matches_definition(kind, temp, logits):
    s, t, mask = logits
    beta, skew = 0.3, 0.2
    want = reference(s, t, kind, temp, beta, skew)
    got = per_token(
        jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), kind, temp, beta=beta, skew=skew
    )
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-6)
    mean = token_divergence(
        jnp.asarray(s, jnp.float32),
        jnp.asarray(t, jnp.float32),
        mask,
        kind,
        temp,
        beta=beta,
        skew=skew,
    )
    np.testing.assert_allclose(float(mean), want[mask == 1].mean(), rtol=2e-5)
    same = per_token(jnp.asarray(t), jnp.asarray(t), kind, temp, beta=beta, skew=skew)
    np.testing.assert_allclose(np.asarray(same), 0.0, atol=1e-6)


def test_special_cases(logits):
    s, t, _ = logits
    s, t = jnp.asarray(s), jnp.asarray(t)
    np.testing.assert_allclose(
        per_token(s, t, "skew_fkl", skew=0.0), per_token(s, t, "fkl"), rtol=1e-6
    )
    np.testing.assert_allclose(
        per_token(s, t, "skew_rkl", skew=0.0), per_token(s, t, "rkl"), rtol=1e-6
    )
    js = np.asarray(per_token(s * 20, -t * 20, "js", beta=0.5))  # near-disjoint distributions
    assert (js <= np.log(2) + 1e-6).all() and js.max() > 0.6


@pytest.mark.parametrize("kind", ["js", "skew_rkl", "fkl"])
def test_gradient_matches_finite_differences(kind, logits):
    s, t, mask = logits
    with jax.enable_x64(True):

        def f(x):
            return token_divergence(
                x, jnp.asarray(t), jnp.asarray(mask), kind, 1.7, beta=0.4, skew=0.15
            )

        x = jnp.asarray(s, jnp.float64)
        g = np.asarray(jax.grad(f)(x))
        rng = np.random.default_rng(1)
        for _ in range(5):
            v = rng.normal(size=s.shape)
            eps = 1e-6
            fd = (float(f(x + eps * v)) - float(f(x - eps * v))) / (2 * eps)
            assert abs(fd - float(np.sum(g * v))) < 1e-7 * max(1.0, abs(fd))
        assert np.abs(g[mask == 0]).max() == 0  # masked positions get no gradient
        # the teacher is a constant
        gt = jax.grad(lambda y: token_divergence(x, y, jnp.asarray(mask), kind))(jnp.asarray(t))
        assert np.abs(np.asarray(gt)).max() == 0


def test_bad_settings_refused(logits):
    s, t, mask = logits
    with pytest.raises(ValueError, match="one vocabulary"):
        token_divergence(jnp.asarray(s), jnp.asarray(t[..., :7]), mask)
    with pytest.raises(ValueError, match="beta"):
        per_token(jnp.asarray(s), jnp.asarray(t), "js", beta=0.0)
    with pytest.raises(ValueError, match="unknown divergence"):
        per_token(jnp.asarray(s), jnp.asarray(t), "kl")
    with pytest.raises(ValueError, match="skew"):
        per_token(jnp.asarray(s), jnp.asarray(t), "skew_fkl", skew=1.0)
