"""SFT through train_lm then evaluate: a tiny LM learns a word-level task's references and exact
match / reference NLL move the way they must."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from tests.conftest import plain_adam, word_swap
from w2s.lm.data import sft_tokenize
from w2s.lm.train import _take, evaluate, reference_nll, train_lm
from w2s.models import load_lm


def test_sft_then_evaluate(word_lm):
    d, tok = word_lm
    lm = load_lm(str(d))
    prompts, responses = word_swap(10, 0)
    answers = [[r] for r in responses]
    kw = dict(max_length=12, max_new_tokens=4, eos_id=2)
    before = evaluate(lm, tok, prompts, responses, answers, **kw)
    rows = sft_tokenize(tok, prompts, responses, 12, eos_id=2)
    cfg = plain_adam(4, 40)
    result = train_lm(lm, rows, cfg, lr=3e-3, seed=0)
    assert len(result.loss_history) == 40 * 3  # 10 rows in batches of 4, the last padded
    after = evaluate(result.lm, tok, prompts, responses, answers, **kw)
    print(
        f"\nexact match {before['exact_match']:.2f} -> {after['exact_match']:.2f}, "
        f"nll {before['nll']:.2f} -> {after['nll']:.3f}"
    )
    assert before["exact_match"] < 0.5 and after["exact_match"] == 1.0
    assert after["nll"] < 0.1 < 2.0 < before["nll"]
    assert after["texts"] == responses and all(after["correct"])
    nll = reference_nll(result.lm, rows)
    assert nll.shape == (10,) and after["nll"] == pytest.approx(nll.mean())


def test_padding_rows_carry_no_loss(word_lm):
    _, tok = word_lm
    prompts, responses = word_swap(3, 0)
    rows = sft_tokenize(tok, prompts, responses, 12, eos_id=2)
    b = _take(rows, np.array([2, -1, 0]))
    assert (
        np.asarray(b["loss_mask"])[1].sum() == 0 and np.asarray(b["attention_mask"])[1].sum() == 0
    )
    np.testing.assert_array_equal(np.asarray(b["input_ids"])[0], rows.input_ids[2])


def _kd_setup(word_lm, responses):
    d, tok = word_lm
    prompts, _ = word_swap(6, 4)
    rows = sft_tokenize(tok, prompts, responses, 12, eos_id=2)
    cfg = plain_adam(3, 3)
    return rows, cfg, load_lm(str(d)), load_lm(str(d))


def test_fully_on_policy_kd_never_reads_the_responses(word_lm, tmp_path):
    """fraction 1: every batch is the student's own samples, so the rows' responses (here two
    different sets) cannot change the result; fraction 0 reads them."""
    import jax
    import transformers

    from tests.helpers import save_tiny
    from w2s.lm.step import KD
    from w2s.lm.train import OnPolicy

    cfg_t = transformers.LlamaConfig(
        vocab_size=48,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
    )
    _, teacher_dir = save_tiny(transformers.LlamaForCausalLM, cfg_t, tmp_path / "t", seed=9)
    policy = OnPolicy(1.0, max_new_tokens=4, eos_id=2)
    params = {}
    for name, responses, pol in (
        ("a", ["w5 w6"] * 6, policy),
        ("b", ["w9"] * 6, policy),
        ("c", ["w9"] * 6, OnPolicy(0.0, 4, 2)),
    ):
        rows, cfg, student, _ = _kd_setup(word_lm, responses)
        out = train_lm(
            student,
            rows,
            cfg,
            lr=3e-3,
            seed=1,
            teacher=load_lm(str(teacher_dir)),
            kd=KD("fkl"),
            on_policy=pol,
        )
        params[name] = jax.tree.map(np.asarray, nnx.state(out.lm, nnx.Param))
    same = jax.tree.map(np.array_equal, params["a"], params["b"])
    assert all(jax.tree.leaves(same))
    differ = jax.tree.map(np.array_equal, params["b"], params["c"])
    assert not all(jax.tree.leaves(differ))
    with pytest.raises(ValueError, match="needs a teacher"):
        rows, cfg, student, _ = _kd_setup(word_lm, ["w5"] * 6)
        train_lm(student, rows, cfg, lr=1e-3, on_policy=policy)


def test_self_training_at_alpha_one_ignores_the_supervision(word_lm):
    """α = 1 leaves only the student's own greedy answers as targets: the rows' responses
    (the weak answers) then cannot change the result."""
    import jax

    from w2s.lm.step import SelfTraining

    params = []
    for responses in (["w5 w6"] * 6, ["w9"] * 6):
        rows, cfg, student, _ = _kd_setup(word_lm, responses)
        out = train_lm(
            student,
            rows,
            cfg,
            lr=3e-3,
            seed=1,
            aux=SelfTraining(1.0),
            eos_id=2,
            aux_max_new_tokens=4,
        )
        params.append(jax.tree.map(np.asarray, nnx.state(out.lm, nnx.Param)))
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, *params)))
    with pytest.raises(ValueError, match="needs eos_id"):
        rows, cfg, student, _ = _kd_setup(word_lm, ["w5"] * 6)
        train_lm(student, rows, cfg, lr=1e-3, aux=SelfTraining(0.5))
