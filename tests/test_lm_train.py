"""The LM train step: response-only NLL against numpy, SFT that learns its references (checked
by greedy generation), token-level KD that pulls a student onto a frozen teacher."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tests.helpers import save_tiny
from w2s.generate import generate
from w2s.lm.losses import response_nll, row_nll
from w2s.lm.step import KD, check_same_vocab, make_lm_step
from w2s.models import load_lm

transformers = pytest.importorskip("transformers")
VOCAB, EOS = 61, 2


def _ckpt(tmp_path_factory, name, seed, vocab=VOCAB, **kw):
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **kw,
    )
    return save_tiny(transformers.LlamaForCausalLM, cfg, tmp_path_factory.mktemp(name), seed=seed)[
        1
    ]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return {
        "a": _ckpt(tmp_path_factory, "a", 0),
        "b": _ckpt(tmp_path_factory, "b", 1),
        "other_vocab": _ckpt(tmp_path_factory, "v", 2, vocab=VOCAB + 3),
    }


def _pairs(seed=0, n=4):
    """Prompts and responses of random tokens (3..8 and 2..4 long, ids >= 3)."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, VOCAB, int(rng.integers(3, 9))).tolist() for _ in range(n)]
    responses = [rng.integers(3, VOCAB, int(rng.integers(2, 5))).tolist() for _ in range(n)]
    return prompts, responses


def _batch(prompts, responses, s=16):
    n = len(prompts)
    ids, attn, loss = (np.zeros((n, s), np.int32) for _ in range(3))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        seq = [*p, *r, EOS]
        ids[i, : len(seq)], attn[i, : len(seq)] = seq, 1
        loss[i, len(p) : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def test_response_nll_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 6, 9))
    ids = rng.integers(0, 9, (2, 6))
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    terms = {
        (b, t): -logp[b, t - 1, ids[b, t]] for b in range(2) for t in range(1, 6) if mask[b, t]
    }
    got = float(response_nll(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask)))
    assert got == pytest.approx(np.mean(list(terms.values())), rel=1e-5)
    rows = np.asarray(row_nll(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(mask)))
    want = [np.mean([v for (b, _), v in terms.items() if b == r]) for r in range(2)]
    np.testing.assert_allclose(rows, want, rtol=1e-5)


def test_sft_learns_references(ckpts):
    prompts, responses = _pairs()
    lm = load_lm(str(ckpts["a"]))
    n = max(map(len, prompts))
    ids = np.zeros((4, n), np.int32)
    mask = np.zeros((4, n), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], mask[i, : len(p)] = p, 1
    before = np.asarray(generate(lm, ids, mask, 6, eos_id=EOS))  # untrained: not the references
    assert any(before[i, : len(r)].tolist() != r for i, r in enumerate(responses))
    graphdef, params = nnx.split(lm)  # the step donates these: lm is spent after training
    tx = optax.adam(3e-3)
    step = make_lm_step(graphdef, tx)
    batch = {k: jnp.asarray(v) for k, v in _batch(prompts, responses).items()}
    opt_state = tx.init(params)
    losses = []
    for _ in range(150):
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
    assert losses[-1] < 0.05 < 2.0 < losses[0], (losses[0], losses[-1])
    trained = nnx.merge(graphdef, params)
    out = np.asarray(generate(trained, ids, mask, 6, eos_id=EOS))
    for i, r in enumerate(responses):
        assert out[i, : len(r) + 1].tolist() == [*r, EOS], (i, out[i], r)


def test_token_kd_pulls_student_onto_teacher(ckpts):
    prompts, responses = _pairs(seed=1)
    teacher, student = load_lm(str(ckpts["a"])), load_lm(str(ckpts["b"]))
    check_same_vocab(student, teacher)
    t_graphdef, t_params = nnx.split(teacher)
    t_before = jax.tree.map(np.asarray, t_params)
    graphdef, params = nnx.split(student)
    tx = optax.adam(3e-3)
    step = make_lm_step(graphdef, tx, teacher=t_graphdef, kd=KD("js", temperature=2.0))
    batch = {k: jnp.asarray(v) for k, v in _batch(prompts, responses).items()}
    opt_state = tx.init(params)
    losses = []
    for _ in range(80):
        params, opt_state, loss = step(params, opt_state, batch, t_params)
        losses.append(float(loss))
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])
    jax.tree.map(np.testing.assert_array_equal, t_before, jax.tree.map(np.asarray, t_params))


def test_vocab_mismatch_refused(ckpts):
    with pytest.raises(ValueError, match="student has 61 tokens, the teacher 64"):
        check_same_vocab(load_lm(str(ckpts["a"])), load_lm(str(ckpts["other_vocab"])))
    with pytest.raises(ValueError, match="come together"):
        make_lm_step(None, optax.adam(1e-3), kd=KD())


def test_combined_objective_mixes_kd_and_self_training(ckpts):
    """One step's loss is (1 - α) KD + α NLL(own answers), each term computed on its own."""
    from w2s.lm.losses import response_kd
    from w2s.lm.step import SelfTraining
    from w2s.train.step import forward

    prompts, responses = _pairs(seed=2)
    own_prompts, own_responses = _pairs(seed=3)
    batch = {k: jnp.asarray(v) for k, v in _batch(prompts, responses).items()}
    own = {k: jnp.asarray(v) for k, v in _batch(own_prompts, own_responses).items()}
    teacher, student = load_lm(str(ckpts["a"])), load_lm(str(ckpts["b"]))
    t_graphdef, t_params = nnx.split(teacher)
    graphdef, params = nnx.split(student)
    logits = forward(graphdef, params, batch)
    kd_term = float(
        response_kd(logits, forward(t_graphdef, t_params, batch), batch["loss_mask"], "fkl", 1.0)
    )
    own_logits = forward(graphdef, params, own)
    self_term = float(response_nll(own_logits, own["input_ids"], own["loss_mask"]))
    aux = SelfTraining(alpha_max=0.8, schedule="linear", warmup_frac=0.5)
    tx = optax.sgd(0.0)
    step = make_lm_step(graphdef, tx, teacher=t_graphdef, kd=KD("fkl"), aux=aux)
    full = {**batch, **{f"aux_{k}": v for k, v in own.items()}}
    for frac, alpha in ((0.25, 0.4), (0.9, 0.8)):  # linear ramp to 0.8 over the first half
        params, _, loss = step(params, tx.init(params), full, t_params, frac)
        assert float(loss) == pytest.approx((1 - alpha) * kd_term + alpha * self_term, rel=1e-5)
    assert abs(kd_term - self_term) > 0.1  # the mix is visible


def test_sft_step_with_logits_at_response_positions_only_is_the_same_step(ckpts):
    """``response_targets`` in the batch makes the step project only the positions that predict
    response tokens: loss and updated parameters equal the full-logits step's."""
    from w2s.lm.losses import gathered_logits, gathered_nll, response_targets

    rng = np.random.default_rng(4)
    ids = rng.integers(3, VOCAB, size=(3, 10)).astype(np.int32)
    attn = np.array([[1] * 10, [1] * 7 + [0] * 3, [1] * 4 + [0] * 6], np.int32)
    loss_mask = np.array([[0] * 6 + [1] * 4, [0] * 3 + [1] * 4 + [0] * 3,
                          [0, 0, 1, 1] + [0] * 6], np.int32)
    ids = ids * attn
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.asarray(attn),
             "loss_mask": jnp.asarray(loss_mask)}
    targets = response_targets(ids, loss_mask, min_size=4)
    assert len(targets["target_index"]) == 16 and targets["target_weight"].sum() == 10
    lm = load_lm(str(next(iter(ckpts.values()))))
    full = response_nll(lm(batch["input_ids"], batch["attention_mask"]), batch["input_ids"],
                        batch["loss_mask"])
    with_targets = {**batch, **{k: jnp.asarray(v) for k, v in targets.items()}}
    sparse = gathered_nll(gathered_logits(lm, with_targets), with_targets)
    np.testing.assert_allclose(float(sparse), float(full), rtol=1e-6)

    paths = [str(p) for p in ckpts.values()][:2]
    for kd in (None, KD("fkl", 2.0), KD("js", 1.0, beta=0.3)):  # SFT, then KD from a teacher
        results = []
        for extra in ({}, targets):
            graphdef, params = nnx.split(load_lm(paths[0]))
            teacher = nnx.split(load_lm(paths[1])) if kd else (None, None)
            tx = optax.sgd(0.5)
            step = make_lm_step(graphdef, tx, teacher=teacher[0], kd=kd)
            params, _, loss = step(params, tx.init(params), {
                **batch, **{k: jnp.asarray(v) for k, v in extra.items()}}, teacher[1])
            results.append((float(loss), params))
        assert results[0][0] == pytest.approx(results[1][0], rel=1e-6), kd
        for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1]),
                        strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
