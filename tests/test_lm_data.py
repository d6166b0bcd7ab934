"""Generative task files, chat formatting and response-only SFT tokenization."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from w2s.data.tasks import DataError
from w2s.lm.data import (
    format_prompts,
    read_bigbench_generative,
    read_local_generative,
    sft_tokenize,
)

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "</s>",
        "<user>",
        "<assistant>",
        "what",
        "is",
        "2",
        "+",
        "3",
        "?",
        "5",
        "four",
        "six",
    ]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>")
    fast.chat_template = TEMPLATE
    return fast


def test_sft_tokens_and_loss_mask(tokenizer):
    prompts = format_prompts(tokenizer, ["what is 2 + 3 ?", "what is 5 ?"])
    assert prompts[0] == "<user> what is 2 + 3 ? </s> <assistant> "
    batch = sft_tokenize(tokenizer, prompts, ["5", "five six"], 12, eos_id=2)
    v = tokenizer.get_vocab()
    row0 = [v[w] for w in "<user> what is 2 + 3 ? </s> <assistant> 5".split()] + [2]
    np.testing.assert_array_equal(batch.input_ids[0, :11], row0)
    assert batch.input_ids[0, 11] == 0 and batch.attention_mask[0].sum() == 11
    np.testing.assert_array_equal(np.flatnonzero(batch.loss_mask[0]), [9, 10])  # "5", EOS
    assert batch.prompt_lengths.tolist() == [9, 7]
    assert batch.loss_mask[1].sum() == 3 and batch.truncated == 0  # [UNK] six </s>
    raw = format_prompts(tokenizer, ["what is 5 ?"], chat=False)
    assert raw == ["what is 5 ?"]


def test_truncation_and_refusal(tokenizer):
    p = format_prompts(tokenizer, ["what is 2 + 3 ?"])
    batch = sft_tokenize(tokenizer, p, ["5 5 5 5"], 11, eos_id=2)
    assert batch.truncated == 1 and batch.loss_mask[0].sum() == 2
    with pytest.raises(DataError, match="row 0: the prompt has 9 tokens"):
        sft_tokenize(tokenizer, p, ["5"], 9, eos_id=2)
    with pytest.raises(ValueError, match="no chat_template"):
        format_prompts(type("T", (), {"chat_template": None})(), ["x"], chat=True)


def test_local_file_and_errors(tmp_path):
    rows = [
        {"id": "a", "prompt": "2+3?", "response": "5", "answers": ["five"]},
        {"id": "b", "prompt": "1+1?", "response": "2", "answers": []},
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = read_local_generative(path)
    assert data.ids == ["a", "b"] and data.answers == [["5", "five"], ["2"]]
    csv = tmp_path / "t.csv"
    pd.DataFrame([{**rows[0], "answers": json.dumps(["five"])}]).to_csv(csv, index=False)
    assert read_local_generative(csv).answers == [["5", "five"]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "response": ""}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl: row 0: response"):
        read_local_generative(bad)
    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match="missing column 'response'"):
        read_local_generative(missing)


def test_bigbench_targets(tmp_path):
    task = {
        "examples": [
            {"input": "2+2", "target": ["4", "four"]},
            {"input": "1+1", "target": "2"},
            {"input": "x", "target_scores": {"a": 0, "b": 1}},
        ]
    }
    path = tmp_path / "arith" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps(task))
    data = read_bigbench_generative(path)
    assert data.name == "arith" and data.responses == ["4", "2", "b"]
    assert data.answers == [["4", "four"], ["2"], ["b"]]


def test_arithmetic_task_is_fixed_distinct_and_right():
    import re

    from w2s.lm.tasks import arithmetic

    d = arithmetic("2_digit_addition")
    assert len(d) == 90 * 90 and len(set(d.prompts)) == len(d)  # every pair of 10..99, once
    assert d.prompts == arithmetic("2_digit_addition").prompts  # the same on every call
    for p, r, a in zip(d.prompts[:200], d.responses, d.answers, strict=False):
        x, y = map(int, re.fullmatch(r"What is (\d+) plus (\d+)\?", p).groups())
        assert 10 <= x <= 99 and 10 <= y <= 99 and r == str(x + y) and a == [r]
    sub = arithmetic("1_digit_subtraction")
    assert len(sub) == 100 and "What is 3 minus 7?" in sub.prompts
    assert sub.responses[sub.prompts.index("What is 3 minus 7?")] == "-4"
    mul = arithmetic("3_digit_multiplication")
    assert len(mul) == 20_000 and len(set(mul.ids)) == 20_000
    with pytest.raises(DataError, match="2_digit_addition"):
        arithmetic("2_digit_division")


def test_trim_drops_only_all_pad_columns():
    from w2s.lm.data import SFTBatch, trim

    ids = np.zeros((2, 40), np.int32)
    ids[0, :9], ids[1, :5] = np.arange(1, 10), np.arange(1, 6)
    mask = (ids > 0).astype(np.int32)
    loss = mask.copy()
    loss[:, :3] = 0
    rows = SFTBatch(ids, mask, loss, np.array([3, 3]), 0)
    t = trim(rows)
    assert t.input_ids.shape == (2, 16)  # the longest row (9) rounded up to 8's multiple
    np.testing.assert_array_equal(t.input_ids, ids[:, :16])
    np.testing.assert_array_equal(t.loss_mask, loss[:, :16])
    assert trim(rows, room=20).input_ids.shape == (2, 24)  # prompt (3) + 20 generated tokens
    assert trim(rows, room=100) is rows  # never wider than the rows were
