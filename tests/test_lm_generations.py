"""A teacher's answers: order kept through length-sorted batching, text and log-probs consistent
with single-prompt generation, samples reproducible, stored all or nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import LM_WORDS as WORDS
from w2s.generate import generate
from w2s.lm.generations import answer, generations_frame, write_generations
from w2s.models import load_lm


def _prompts(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return [
        " ".join(f"w{k}" for k in rng.integers(0, 45, int(rng.integers(2, 12)))) for _ in range(n)
    ]


def test_answers_in_order_and_consistent(word_lm):
    d, tok = word_lm
    lm = load_lm(str(d))
    prompts = _prompts()
    eos = 2
    got = answer(lm, tok, prompts, max_new_tokens=8, eos_id=eos, batch_size=3)
    assert [len(a) for a in got] == [1] * len(prompts)
    for p, (a,) in zip(prompts, got, strict=True):
        ids = np.asarray([tok(p, add_special_tokens=False)["input_ids"]], np.int32)
        tokens, logps = generate(lm, ids, np.ones_like(ids), 8, eos_id=eos, return_logprobs=True)
        tokens, logps = np.asarray(tokens)[0], np.asarray(logps)[0]
        n = len(a["token_ids"])
        assert a["token_ids"] == tokens[:n].tolist()
        np.testing.assert_allclose(a["token_logprobs"], logps[:n], atol=1e-5)
        assert n == 8 or a["token_ids"][-1] == eos
        special = set(tok.all_special_ids)
        assert a["text"] == " ".join(WORDS[t] for t in a["token_ids"] if t not in special)
        assert a["confidence"] == pytest.approx(np.mean(a["token_logprobs"]))


def test_samples_reproducible_and_frame(word_lm, tmp_path):
    d, tok = word_lm
    lm = load_lm(str(d))
    prompts = _prompts(4, seed=1)
    kw = dict(max_new_tokens=6, eos_id=2, samples=2, temperature=1.0, seed=11)
    a, b = answer(lm, tok, prompts, **kw), answer(lm, tok, prompts, **kw)
    assert a == b and any(x[0]["token_ids"] != x[1]["token_ids"] for x in a)
    frame = generations_frame(["a", "b", "c", "d"], "b", prompts, a)
    assert len(frame) == 8 and frame["sample"].tolist() == [0, 1] * 4
    path = tmp_path / "run" / "generations.parquet"
    write_generations(path, frame)
    back = pd.read_parquet(path)
    assert back["text"].tolist() == frame["text"].tolist()
    assert [list(x) for x in back["token_ids"]] == frame["token_ids"].tolist()
    with pytest.raises(ValueError, match="lack columns"):
        write_generations(tmp_path / "bad.parquet", frame.drop(columns="confidence"))
    assert not (tmp_path / "bad.parquet").exists()
    with pytest.raises(ValueError, match="temperature > 0"):
        answer(lm, tok, prompts, max_new_tokens=4, eos_id=2, samples=2)
