"""Preference losses against hand values, float64 finite differences and the DPO identities."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s.pref.losses import bradley_terry, dpo, pairwise_accuracy, sequence_logprob


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_hand_values():
    rc, rr = jnp.asarray([2.0, 0.5]), jnp.asarray([1.0, 1.5])
    want = -(math.log(_sig(1.0)) + math.log(_sig(-1.0))) / 2
    assert float(bradley_terry(rc, rr)) == pytest.approx(want, rel=1e-6)
    p = jnp.asarray([0.8, 0.3])
    soft = -(0.8 * math.log(_sig(1)) + 0.2 * math.log(_sig(-1))
             + 0.3 * math.log(_sig(-1)) + 0.7 * math.log(_sig(1))) / 2
    assert float(bradley_terry(rc, rr, p)) == pytest.approx(soft, rel=1e-6)
    # a hard target of 1 is the plain loss
    assert float(bradley_terry(rc, rr, jnp.ones(2))) == pytest.approx(want, rel=1e-6)


def test_dpo_ipo_and_smoothing_hand_values():
    pc, pr, rc, rr = (jnp.asarray([v]) for v in (-3.0, -5.0, -4.0, -4.5))
    h = (-3.0 + 4.0) - (-5.0 + 4.5)  # 1.5
    beta = 0.1
    assert float(dpo(pc, pr, rc, rr, beta)) == pytest.approx(-math.log(_sig(beta * h)), rel=1e-6)
    eps = 0.2
    want = -(1 - eps) * math.log(_sig(beta * h)) - eps * math.log(_sig(-beta * h))
    got = dpo(pc, pr, rc, rr, beta, label_smoothing=eps)
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert float(dpo(pc, pr, rc, rr, beta, kind="ipo")) == pytest.approx((h - 5.0) ** 2, rel=1e-6)
    with pytest.raises(ValueError, match="beta > 0"):
        dpo(pc, pr, rc, rr, 0.0)
    with pytest.raises(ValueError, match="unknown"):
        dpo(pc, pr, rc, rr, 0.1, kind="hinge")


def test_dpo_at_the_reference_is_log2_with_the_analytic_gradient():
    ref = jnp.asarray([-7.0, -2.0, -9.5]), jnp.asarray([-6.0, -3.0, -1.0])
    beta = 0.25
    loss, grads = jax.value_and_grad(lambda c, r: dpo(c, r, *ref, beta), argnums=(0, 1))(*ref)
    assert float(loss) == pytest.approx(math.log(2), rel=1e-6)
    # d/dh -log sigma(beta h) at h = 0 is -beta / 2; each of n = 3 pairs carries 1/n
    np.testing.assert_allclose(grads[0], -beta / 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(grads[1], beta / 2 / 3, rtol=1e-6)


@pytest.mark.parametrize("case", ["bt", "bt_soft", "dpo", "dpo_smooth", "ipo"])
def test_gradients_match_float64_finite_differences(case):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(4, 4)))
        t = jnp.asarray(rng.uniform(size=4))

        def f(x):
            c, r, rc, rr = x
            return {
                "bt": lambda: bradley_terry(c, r),
                "bt_soft": lambda: bradley_terry(c, r, t),
                "dpo": lambda: dpo(c, r, rc, rr, 0.3),
                "dpo_smooth": lambda: dpo(c, r, rc, rr, 0.3, label_smoothing=0.1),
                "ipo": lambda: dpo(c, r, rc, rr, 0.3, kind="ipo"),
            }[case]()

        g = np.asarray(jax.grad(f)(x))
        h = 1e-6
        fd = np.zeros_like(g)
        for idx in np.ndindex(*x.shape):
            e = np.zeros(x.shape)
            e[idx] = h
            fd[idx] = (f(x + e) - f(x - e)) / (2 * h)
        np.testing.assert_allclose(g, fd, atol=1e-8)


def test_sequence_logprob_counts_response_tokens_only():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(2, 6, 11)), jnp.float32)
    ids = jnp.asarray(rng.integers(1, 11, size=(2, 6)))
    mask = jnp.asarray([[0, 0, 1, 1, 1, 0], [0, 0, 0, 1, 1, 1]])
    got = np.asarray(sequence_logprob(logits, ids, mask))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    want = [sum(logp[b, t - 1, int(ids[b, t])] for t in range(6) if mask[b, t]) for b in (0, 1)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # logits that predict prompt tokens (positions before the first response token - 1) and
    # the pad's own position do not matter
    changed = logits.at[0, 0].add(5.0).at[1, :2].add(-3.0).at[:, 5].add(7.0)
    np.testing.assert_allclose(np.asarray(sequence_logprob(changed, ids, mask)), got, rtol=1e-6)


def test_pairwise_accuracy_counts_ties_half():
    acc = pairwise_accuracy(jnp.asarray([1.0, 0.0, 2.0, 3.0]), jnp.asarray([0.0, 0.0, 3.0, 1.0]))
    assert float(acc) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_pair_logconf_mixes_in_the_side_the_student_prefers_whatever_the_storage_order():
    from w2s.config import LossConfig
    from w2s.pref.rm_train import pair_logconf

    loss = LossConfig(name="logconf", aux_coef=0.5, warmup_frac=0.2, warmup="step")
    z = np.array([[0.0, 1.5], [0.0, -0.4], [0.3, 0.0]])  # (r_rejected, r_chosen) per pair
    p = np.array([0.6, 0.7, 0.2])
    targets = np.stack([1 - p, p], axis=1)
    weight = np.array([1.0, 1.0, 0.0])  # the third is padding
    got = float(pair_logconf(jnp.asarray(z), jnp.asarray(targets), jnp.asarray(weight), 0.5, loss))
    # after warm-up c = 0.5; the student prefers chosen in pair 0, rejected in pair 1
    hard = np.array([[0.0, 1.0], [1.0, 0.0]])
    mixed = 0.5 * targets[:2] + 0.5 * hard
    logp = z[:2] - np.log(np.exp(z[:2]).sum(1, keepdims=True))
    assert got == pytest.approx(float(-(mixed * logp).sum(1).mean()), rel=1e-6)
    # a pair stored the other way round (sides and target swapped) has the same loss
    swapped = float(pair_logconf(jnp.asarray(z[:, ::-1].copy()), jnp.asarray(targets[:, ::-1].copy()),
                                 jnp.asarray(weight), 0.5, loss))
    assert swapped == pytest.approx(got, rel=1e-6)
