"""Losses against hand arithmetic in numpy, finite differences, padding rows, jit and the registry.

The numpy references below are written from the formulas, independently of w2s.train.losses.
Fixtures are 3 examples x 2 classes with the last example masked out, so every value also
checks that the padding row is ignored.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s.config import LossConfig
from w2s.train.divergences import DIVERGENCES, divergence
from w2s.train.losses import LOSSES, combined, get_loss, harden, logconf, product, xent
from w2s.train.schedules import alpha_at, logconf_coef

# --------------------------------------------------------------------------------------------
# numpy references


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(z))


def np_ce(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-row -sum t log p, skipping t = 0."""
    lp = np_log_softmax(z.astype(np.float64))
    return -np.where(t != 0, t * lp, 0.0).sum(-1)


def np_harden(p: np.ndarray, prior: np.ndarray, real: np.ndarray) -> np.ndarray:
    if p.shape[1] == 2:
        level = prior[real, 1].mean()
        thr = np.quantile(p[real, 0], level)  # numpy's default is linear interpolation
        is_0 = p[:, 0] >= thr
        return np.stack([is_0, ~is_0], 1).astype(np.float64)
    return np.eye(p.shape[1])[p.argmax(1)]


def np_fkl(z: np.ndarray, q: np.ndarray, t: float) -> np.ndarray:
    lp = np_log_softmax(z.astype(np.float64) / t)
    lq = np.log(np.where(q > 0, q, 1.0))
    return np.where(q > 0, q * (lq - lp), 0.0).sum(-1) * t**2


def np_entropy(q: np.ndarray) -> np.ndarray:
    return -np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0).sum(-1)


# 3 x 2, row 2 is padding. Row 0: the weak label leans to class 1, the student to class 0.
Z = np.array([[1.2, -0.3], [-0.4, 0.9], [0.5, 0.1]], np.float32)
Y = np.array([[0.4, 0.6], [0.35, 0.65], [0.1, 0.9]], np.float32)
M = np.array([1.0, 1.0, 0.0], np.float32)
REAL = M > 0
GT = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
GM = np.array([1.0, 0.0, 1.0], np.float32)  # row 0 only: row 2 has gt_mask 1 but is padding
J = jnp.asarray


def f32(t: float) -> jax.Array:
    return jnp.float32(t)


# --------------------------------------------------------------------------------------------
# xent


def test_xent_literal():
    # p = (1/4, 3/4) and (3/4, 1/4); the third row is padding with arbitrary values
    z = J([[0.0, math.log(3.0)], [math.log(3.0), 0.0], [100.0, -100.0]])
    y = J([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    want = (math.log(4.0) + (-0.5 * math.log(0.75) - 0.5 * math.log(0.25))) / 2
    np.testing.assert_allclose(jax.jit(xent)(z, y, J(M), f32(0.3)), want, rtol=1e-6)


def test_xent_matches_numpy_and_gradient_by_hand():
    val, g = jax.value_and_grad(xent)(J(Z), J(Y), J(M), f32(0.0))
    assert val.dtype == jnp.float32 and val.shape == ()
    np.testing.assert_allclose(val, np_ce(Z, Y)[REAL].mean(), rtol=1e-6)
    # d/dz CE(z, y) = softmax(z) - y for rows whose targets sum to 1, divided by the real count
    want = (np_softmax(Z.astype(np.float64)) - Y) * M[:, None] / REAL.sum()
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# logconf

# (step_frac, c for warmup="step", c for warmup="linear") with aux_coef 0.5, warmup_frac 0.2
C_TABLE = [
    (0.0, 0.0, 0.0),
    (0.1, 0.05, 0.25),
    (0.2, 0.1, 0.5),  # step: still on the ramp at t = warmup_frac ...
    (0.25, 0.5, 0.5),  # ... and jumps to aux_coef right after
    (0.5, 0.5, 0.5),
    (1.0, 0.5, 0.5),
]


def test_logconf_coefficient_table():
    for t, c_step, c_lin in C_TABLE:
        np.testing.assert_allclose(logconf_coef(f32(t), 0.5, 0.2, "step"), c_step, rtol=1e-6)
        np.testing.assert_allclose(logconf_coef(f32(t), 0.5, 0.2, "linear"), c_lin, rtol=1e-6)
    with pytest.raises(ValueError, match="step, linear"):
        logconf_coef(0.5, 0.5, 0.2, "cosine")


@pytest.mark.parametrize("warmup", ["step", "linear"])
def test_logconf_values_by_hand(warmup):
    p = np_softmax(Z.astype(np.float64))
    # p0 = .8176 (row 0), .2142 (row 1); prior level = mean(.6, .65) = .625 over real rows,
    # threshold = .2142 + .625 (.8176 - .2142) = .5913, so row 0 -> class 0, row 1 -> class 1
    y_hat = np_harden(p, Y.astype(np.float64), REAL)
    np.testing.assert_array_equal(y_hat[:2], [[1, 0], [0, 1]])
    fn = jax.jit(partial(logconf, aux_coef=0.5, warmup_frac=0.2, warmup=warmup))
    for t, c_step, c_lin in C_TABLE:
        c = c_step if warmup == "step" else c_lin
        target = (1 - c) * Y + c * y_hat
        want = np_ce(Z, target)[REAL].mean()
        val, g = jax.value_and_grad(fn)(J(Z), J(Y), J(M), f32(t))
        np.testing.assert_allclose(val, want, rtol=1e-6, err_msg=f"t={t}")
        # y_hat is detached: the gradient is that of CE to a constant target
        np.testing.assert_allclose(
            g, (p - target) * M[:, None] / REAL.sum(), rtol=1e-5, atol=1e-7, err_msg=f"t={t}"
        )


def binary_logits(p0: list[float]) -> jax.Array:
    p0 = np.asarray(p0)
    return J(np.log(np.stack([p0, 1 - p0], 1)))


def test_hardening_threshold_known_answer():
    # real p0 = .9 .8 .3 .2; two padding rows with p0 = .95 .99 and y1 = 1
    z = binary_logits([0.9, 0.8, 0.3, 0.2, 0.95, 0.99])
    mask = J([1.0, 1, 1, 1, 0, 0])
    real = mask > 0
    p = jax.nn.softmax(z)
    harden_jit = jax.jit(harden)
    # prior of class 1 = .25: threshold = quantile(.2 .3 .8 .9; .25) = .2 + .75 * .1 = .275,
    # so three of the four real rows are class 0, matching the prior (3/4 class 0).
    # Counting the padding rows would give level .5 and threshold .85, flipping p0 = .8.
    y = J(np.eye(2)[[0, 0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(harden_jit(p, y, real)[:4], np.eye(2)[[0, 0, 0, 1]])
    # prior .5: threshold = quantile(.2 .3 .8 .9; .5) = (.3 + .8) / 2 = .55
    y = J(np.eye(2)[[0, 0, 1, 1, 1, 1]])
    np.testing.assert_array_equal(harden_jit(p, y, real)[:4], np.eye(2)[[0, 0, 1, 1]])
    # soft labels: only their mean counts (y1 mean = (.1 + .2 + .3 + .4) / 4 = .25)
    y = J([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0, 1], [0, 1]])
    np.testing.assert_array_equal(harden_jit(p, y, real)[:4], np.eye(2)[[0, 0, 0, 1]])
    # through the loss: aux_coef 1 after warm-up makes the target exactly y_hat
    val = jax.jit(partial(logconf, aux_coef=1.0, warmup_frac=0.2))(z, y, mask, f32(1.0))
    want = -(math.log(0.9) + math.log(0.8) + math.log(0.3) + math.log(0.8)) / 4
    np.testing.assert_allclose(val, want, rtol=1e-6)
    # prior 0 (every weak label says class 0): threshold = min p0, and ">=" keeps all in class 0
    y = J(np.eye(2)[[0, 0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(harden_jit(p, y, real)[:4], np.eye(2)[[0, 0, 0, 0]])
    # more than two classes: argmax
    z3 = J([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5], [0.0, 0.2, 0.3]])
    got = harden(jax.nn.softmax(z3), J(np.full((3, 3), 1 / 3)), J([True, True, True]))
    np.testing.assert_array_equal(got, np.eye(3)[[1, 0, 2]])


# --------------------------------------------------------------------------------------------
# product


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.5, 2.0), (1.0, 0.0), (0.0, 1.0)])
def test_product_by_hand(alpha, beta):
    p = np_softmax(Z.astype(np.float64))
    t = p**beta * Y.astype(np.float64) ** alpha
    t /= t.sum(1, keepdims=True)
    fn = partial(product, alpha=alpha, beta=beta)
    val, g = jax.value_and_grad(fn)(J(Z), J(Y), J(M), f32(0.5))
    np.testing.assert_allclose(val, np_ce(Z, t)[REAL].mean(), rtol=1e-6)
    # detached target: the gradient is (p - target) / n on real rows
    np.testing.assert_allclose(g, (p - t) * M[:, None] / REAL.sum(), rtol=1e-5, atol=1e-7)
    if beta == 0.0:  # y**1 alone: plain xent
        np.testing.assert_allclose(val, xent(J(Z), J(Y), J(M)), rtol=1e-6)
    if alpha == 0.0:  # target = p itself: nothing to learn
        np.testing.assert_allclose(g, 0.0, atol=1e-7)


def test_product_hard_labels_and_saturated_student():
    z = J([[30.0, -30.0], [-2.0, 1.0], [0.0, 0.0]])
    y = J([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    val, g = jax.value_and_grad(partial(product, alpha=1.0, beta=1.0))(z, y, J(M), f32(0.0))
    # with one-hot y, p^beta y^alpha renormalised is y itself: CE to the hard label
    np.testing.assert_allclose(val, np_ce(np.asarray(z), np.asarray(y))[:2].mean(), rtol=1e-6)
    assert np.all(np.isfinite(g))


# --------------------------------------------------------------------------------------------
# combined objective and alpha schedules

TS = [0.0, 0.1, 0.5, 1.0]
SCHEDULES = ["constant", "linear", "step", "cosine"]
# alpha(t) at TS with alpha_max 0.6, computed by hand
ALPHA = {
    ("constant", 0.2): [0.6, 0.6, 0.6, 0.6],
    ("linear", 0.2): [0.0, 0.3, 0.6, 0.6],  # 0.6 * min(t / 0.2, 1)
    ("step", 0.2): [0.0, 0.06, 0.6, 0.6],  # 0.6 * t until 0.2, then 0.6
    ("cosine", 0.2): [0.0, 0.3, 0.6, 0.6],  # 0.3 * (1 - cos(pi * min(t / 0.2, 1)))
    ("constant", 1.0): [0.6, 0.6, 0.6, 0.6],
    ("linear", 1.0): [0.0, 0.06, 0.3, 0.6],
    ("step", 1.0): [0.0, 0.06, 0.3, 0.6],
    ("cosine", 1.0): [0.0, 0.3 * (1 - math.cos(0.1 * math.pi)), 0.3, 0.6],
}


def test_alpha_schedules_by_hand():
    for (sched, w), want in ALPHA.items():
        got = [float(alpha_at(f32(t), 0.6, sched, w)) for t in TS]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=f"{sched} {w}")
    np.testing.assert_allclose(alpha_at(f32(0.0), 0.6, "linear", 0.0), 0.6)  # no warm-up
    with pytest.raises(ValueError, match="constant, linear, step, cosine"):
        alpha_at(0.5, 0.6, "exp")


def combined_at_all_schedules(aux: str, temperature: float = 2.0, w: float = 0.2):
    """jit(vmap over t) of the combined loss, one column per schedule: [len(TS), 4]."""

    kw = dict(divergence="fkl", temperature=temperature, aux=aux, alpha_max=0.6, warmup_frac=w)
    kw |= dict(gt_targets=J(GT), gt_mask=J(GM))

    def f(t):
        return jnp.stack([combined(J(Z), J(Y), J(M), t, alpha_schedule=s, **kw) for s in SCHEDULES])

    return np.asarray(jax.jit(jax.vmap(f))(jnp.asarray(TS, jnp.float32)))


@pytest.mark.parametrize("aux", ["none", "confidence", "gt"])
def test_combined_by_hand(aux):
    d = np_fkl(Z, Y, 2.0)[REAL].mean()  # T = 2, times T**2 = 4
    if aux == "confidence":
        y_hat = np_harden(np_softmax(Z.astype(np.float64)), Y.astype(np.float64), REAL)
        l_aux = np_ce(Z, y_hat)[REAL].mean()
    elif aux == "gt":
        l_aux = np_ce(Z, GT)[0]  # the only row with mask 1 and gt_mask 1
    got = combined_at_all_schedules(aux)
    for j, sched in enumerate(SCHEDULES):
        for i, a in enumerate(ALPHA[(sched, 0.2)]):
            want = d if aux == "none" else (1 - a) * d + a * l_aux
            np.testing.assert_allclose(got[i, j], want, rtol=1e-6, err_msg=f"{sched} t={TS[i]}")


def test_combined_every_divergence_without_aux():
    def f(z, y, m, t):
        kw = dict(temperature=2.0, alpha_max=0.9)  # aux none: alpha is ignored
        return jnp.stack([combined(z, y, m, t, divergence=k, **kw) for k in DIVERGENCES])

    def per_row(z, y):
        return jnp.stack([divergence(z, y, k, 2.0) for k in DIVERGENCES])

    got = jax.jit(f)(J(Z), J(Y), J(M), f32(0.5))
    want = np.asarray(jax.jit(per_row)(J(Z[:2]), J(Y[:2]))).mean(1)  # the two real rows
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[0], np_fkl(Z, Y, 2.0)[REAL].mean(), rtol=1e-6)


def test_combined_gt_rows_absent_and_missing_arrays():
    no_gt = J([0.0, 0.0, 1.0])  # the only gt row is padding: L_aux = 0
    fn = partial(combined, aux="gt", alpha_max=0.5, temperature=2.0)
    got = fn(J(Z), J(Y), J(M), f32(1.0), gt_targets=J(GT), gt_mask=no_gt)
    np.testing.assert_allclose(got, 0.5 * np_fkl(Z, Y, 2.0)[REAL].mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="gt_targets"):
        fn(J(Z), J(Y), J(M), f32(1.0))
    with pytest.raises(ValueError, match="none, confidence, gt"):
        combined(J(Z), J(Y), J(M), f32(1.0), aux="entropy")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_identity_alpha0_t1_fkl_is_xent_minus_teacher_entropy(dtype):
    def both(z, y, m, g, gm):
        kw = dict(divergence="fkl", temperature=1.0, alpha_max=0.0, alpha_schedule="linear")
        fns = [xent] + [
            partial(combined, aux=a, gt_targets=g, gt_mask=gm, **kw)
            for a in ["none", "confidence", "gt"]
        ]
        return [jax.value_and_grad(fn)(z, y, m, 0.3) for fn in fns]

    with jax.enable_x64(dtype == "float64"):
        args = [jnp.asarray(a, dtype) for a in (Z, Y, M, GT, GM)]
        (lx, gx), *rest = jax.jit(both)(*args)
        assert lx.dtype == dtype
        h = np_entropy(Y.astype(np.float64))[REAL].mean()
        for aux, (lc, gc) in zip(["none", "confidence", "gt"], rest, strict=True):
            np.testing.assert_allclose(lc, lx - h, rtol=1e-6, atol=1e-6, err_msg=aux)
            np.testing.assert_allclose(gc, gx, rtol=1e-6, atol=1e-7, err_msg=aux)


# --------------------------------------------------------------------------------------------
# padding rows, finite differences, jit


def kd_case(kind: str, aux: str):
    def fn(z, y, m, t, g, gm):
        kw = dict(temperature=2.0, alpha_max=0.7, alpha_schedule="cosine")
        return combined(z, y, m, t, divergence=kind, aux=aux, gt_targets=g, gt_mask=gm, **kw)

    return fn


# every case: fn(logits, targets, mask, step_frac, gt_targets, gt_mask)
CASES = {
    "xent": lambda z, y, m, t, g, gm: xent(z, y, m, t),
    "logconf-step": lambda z, y, m, t, g, gm: logconf(z, y, m, t, warmup="step"),
    "product": lambda z, y, m, t, g, gm: product(z, y, m, t, alpha=0.5, beta=2.0),
    # every divergence and every auxiliary term at least once
    **{
        f"kd-{k}-{a}": kd_case(k, a)
        for k, a in [("fkl", "gt"), ("rkl", "confidence"), ("js", "none"), ("tv", "gt")]
    },
}


def all_cases(z, y, m, t, g, gm):
    return jnp.stack([fn(z, y, m, t, g, gm) for fn in CASES.values()])


@jax.jit
def cases_value_and_jac(z, y, m, t, g, gm):
    return all_cases(z, y, m, t, g, gm), jax.jacrev(all_cases)(z, y, m, t, g, gm)


def test_padding_rows_change_nothing():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 2)).astype(np.float32)
    y = np_softmax(rng.normal(size=(5, 2))).astype(np.float32)
    y[1] = [0.0, 1.0]
    g = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 1]]
    gm = np.array([1, 0, 1, 1, 0], np.float32)
    # garbage: huge and infinite logits, targets that are not probabilities (one NaN)
    z_pad = np.array([[1e30, -1e30], [3e38, -3e38], [-3e38, 1e30], [np.inf, -np.inf]], np.float32)
    y_pad = np.array([[-5.0, 7.0], [1e30, 0.0], [0.0, 0.0], [np.nan, 1.0]], np.float32)
    g_pad = np.array([[-1.0, 2.0], [1e30, -1e30], [0.0, 0.0], [np.inf, 0.0]], np.float32)
    order = np.array([0, 5, 1, 2, 6, 3, 8, 4, 7])  # padding interleaved with real rows
    zp, yp, gp = (np.concatenate(a)[order] for a in ((z, z_pad), (y, y_pad), (g, g_pad)))
    gmp = np.concatenate([gm, [1.0, 1.0, 0.0, 1.0]])[order]
    mp = np.concatenate([np.ones(5), np.zeros(4)])[order].astype(np.float32)

    run = cases_value_and_jac
    v_real, j_real = run(J(z), J(y), J(np.ones(5, np.float32)), f32(0.5), J(g), J(gm))
    v_pad, j_pad = run(J(zp), J(yp), J(mp), f32(0.5), J(gp), J(gmp))
    for k, name in enumerate(CASES):
        assert np.isfinite(v_pad[k]) and np.all(np.isfinite(j_pad[k])), name
        np.testing.assert_allclose(v_pad[k], v_real[k], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(
            j_pad[k][mp > 0],
            j_real[k][np.argsort(order[mp > 0])],
            rtol=1e-5,
            atol=1e-7,
            err_msg=name,
        )
        np.testing.assert_array_equal(j_pad[k][mp == 0], 0.0, err_msg=name)
    # a batch of padding only: 0, no NaN
    v0, j0 = run(J(zp), J(yp), J(np.zeros(9, np.float32)), f32(0.5), J(gp), J(gmp))
    np.testing.assert_array_equal(v0, 0.0)
    np.testing.assert_array_equal(j0, 0.0)


def jac_and_fd(f, x: np.ndarray, h: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """jacrev of f at x and its central differences, both [out, *x.shape], in one compilation."""
    eye = np.eye(x.size).reshape(x.size, *x.shape) * h
    shifted = jnp.asarray(np.concatenate([x + eye, x - eye]))
    jac, vals = jax.jit(lambda a, b: (jax.jacrev(f)(a), jax.vmap(f)(b)))(jnp.asarray(x), shifted)
    vals = np.asarray(vals)
    d = (vals[: x.size] - vals[x.size :]) / (2 * h)  # [x.size, out]
    return np.asarray(jac), d.T.reshape(-1, *x.shape)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_gradients_match_finite_differences(n_classes):
    rng = np.random.default_rng(n_classes)
    with jax.enable_x64(True):
        z = rng.normal(size=(5, n_classes))
        y = np_softmax(rng.normal(size=(5, n_classes)))
        y[2] = np.eye(n_classes)[1]  # a hard label
        m = np.array([1.0, 1.0, 0.0, 1.0, 1.0])
        g = np.eye(n_classes)[[0, 1, 1, 0, 1]]
        gm = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
        args = [jnp.asarray(a) for a in (y, m, 0.37, g, gm)]
        # product's target is detached: its gradient is that of CE to the target frozen at z
        p = np_softmax(z)
        frozen = p**2.0 * y**0.5
        frozen /= frozen.sum(1, keepdims=True)

        def f(x):
            vals = [fn(x, *args) for fn in CASES.values()]
            return jnp.stack([*vals, xent(x, jnp.asarray(frozen), args[1])])

        jac, fd = jac_and_fd(f, z)
        assert jac.dtype == np.float64
        k = list(CASES).index("product")
        for i, name in enumerate(CASES):
            want = fd[-1] if name == "product" else fd[i]
            np.testing.assert_allclose(jac[i], want, rtol=1e-6, atol=1e-9, err_msg=name)
        assert not np.allclose(jac[k], fd[k], atol=1e-4)  # the detach matters


def test_step_frac_is_traced_not_static():
    traces = []

    def fn(z, y, m, t):
        traces.append(None)
        return jnp.stack(
            [
                logconf(z, y, m, t, warmup="step"),
                combined(z, y, m, t, aux="confidence", alpha_max=0.6, alpha_schedule="step"),
            ]
        )

    jitted = jax.jit(fn)
    vals = [jitted(J(Z), J(Y), J(M), f32(t)) for t in [0.0, 0.15, 0.2, 0.21, 1.0]]
    assert len(traces) == 1
    assert not np.allclose(vals[2], vals[3])  # the step warm-up jump happens under trace


# --------------------------------------------------------------------------------------------
# registry


def test_registry_and_get_loss_bind_config():
    assert set(LOSSES) == {"xent", "logconf", "product"}
    args = (J(Z), J(Y), J(M), f32(0.1))
    cases = [
        (LossConfig(), xent(*args)),
        (
            LossConfig(name="logconf", aux_coef=0.3, warmup="linear", warmup_frac=0.4),
            logconf(*args, aux_coef=0.3, warmup="linear", warmup_frac=0.4),
        ),
        (LossConfig(name="product", alpha=0.5, beta=2.0), product(*args, alpha=0.5, beta=2.0)),
        (
            LossConfig(
                name="kd",
                divergence="js",
                temperature=2.0,
                aux="confidence",
                alpha_max=0.5,
                alpha_schedule="cosine",
                warmup_frac=0.5,
            ),
            combined(
                *args,
                divergence="js",
                temperature=2.0,
                aux="confidence",
                alpha_max=0.5,
                alpha_schedule="cosine",
                warmup_frac=0.5,
            ),
        ),
        (
            LossConfig(name="xent", supervision="live", temperature=2.0),
            combined(*args, temperature=2.0),
        ),
        (
            LossConfig(name="xent", hard_labels=True),
            xent(J(Z), J(np.eye(2, dtype=np.float32)[[1, 1, 1]]), J(M), f32(0.1)),
        ),
    ]
    for cfg, want in cases:
        fn = get_loss(cfg)
        if cfg.name == "kd":  # the bound callable compiles with step_frac traced
            fn = jax.jit(fn)
        np.testing.assert_allclose(fn(*args), want, rtol=1e-6, err_msg=str(cfg))
    cfg = LossConfig(name="kd", aux="gt", alpha_max=0.5, gt_fraction=0.1)
    got = get_loss(cfg)(*args, gt_targets=J(GT), gt_mask=J(GM))
    want = combined(*args, aux="gt", alpha_max=0.5, gt_targets=J(GT), gt_mask=J(GM))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"name": "mse"}, "xent, logconf, product, kd"),
        ({"name": "logconf", "supervision": "live"}, "kd"),
        ({"supervision": "teacher"}, "labels, live"),
        ({"name": "logconf", "warmup": "cosine"}, "step, linear"),
        ({"name": "kd", "divergence": "kl"}, "fkl, rkl, js, tv"),
        ({"name": "kd", "aux": "entropy"}, "none, confidence, gt"),
        ({"name": "kd", "alpha_schedule": "exp"}, "constant, linear, step, cosine"),
        ({"name": "kd", "temperature": 0.0}, "temperature"),
        ({"name": "kd", "aux": "gt"}, "gt_fraction"),
    ],
)
def test_get_loss_rejects_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        get_loss(LossConfig(**overrides))
