"""Tokenization keeps the end of overlong texts (where the answer is) or drops them, and says so."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from w2s.data import TaskData, keep_tokenized, load_tokenizer, tokenize

WORDS = ["q", ":", "a", "the", "answer", "is", "yes", "no", "one", "two", "three"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {w: i for i, w in enumerate(SPECIAL + WORDS)}
EOS_VOCAB = {"<eos>": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("bert_tok")
    (d / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n")
    BertTokenizerFast.from_pretrained(str(d)).save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def eos_only_dir(tmp_path_factory) -> Path:
    """A GPT-2-like tokenizer: an eos token, no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(EOS_VOCAB, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="[UNK]")
    d = tmp_path_factory.mktemp("eos_tok")
    tok.save_pretrained(str(d))
    return d


def _ids(*words: str) -> list[int]:
    return [VOCAB[w] for w in words]


def test_truncate_keeps_last_tokens_and_special_tokens(bert_dir, caplog):
    tok = load_tokenizer(bert_dir)
    texts = ["one two three the answer is yes", "the answer is no"]
    with caplog.at_level(logging.INFO, logger="w2s.data"):
        out = tokenize(texts, tok, max_length=6, overlong="truncate")
    cls, sep = VOCAB["[CLS]"], VOCAB["[SEP]"]
    assert out.ids[0].tolist() == [cls, *_ids("the", "answer", "is", "yes"), sep]
    assert out.ids[1].tolist() == [cls, *_ids("the", "answer", "is", "no"), sep]
    assert all(x.dtype == np.int32 for x in out.ids)
    assert out.keep.tolist() == [True, True]
    assert (out.n_truncated, out.n_dropped) == (1, 0)
    assert out.lengths.tolist() == [6, 6]
    assert "truncated 1 of 2 examples to their last 6 tokens" in caplog.text
    assert tok.truncation_side == "right"  # restored


def test_drop_marks_overlong_and_keeps_full_ids(bert_dir, caplog):
    tok = load_tokenizer(bert_dir)
    with caplog.at_level(logging.INFO, logger="w2s.data"):
        out = tokenize(["one two three", "one two three one two"], tok, 5, "drop")
    assert out.keep.tolist() == [True, False]
    assert (out.n_truncated, out.n_dropped) == (0, 1)
    assert len(out.ids[1]) == 7
    assert "dropped 1 of 2 examples longer than 5 tokens" in caplog.text

    data = TaskData("t", ["x", "y"], np.array([0, 1]), ["a", "b"], 2, ["n", "p"])
    kept, ids = keep_tokenized(data, out)
    assert kept.ids == ["a"] and [x.tolist() for x in ids] == [out.ids[0].tolist()]
    assert kept.dropped == {"longer than 5 tokens (task.overlong=drop)": 1}


def test_nothing_overlong_is_untouched(bert_dir):
    out = tokenize(["yes", "no"], load_tokenizer(bert_dir), 16, "drop")
    assert out.keep.all() and out.n_dropped == out.n_truncated == 0
    assert tokenize([], load_tokenizer(bert_dir), 16).ids == []


def test_load_tokenizer_right_pads_and_uses_eos_as_pad(bert_dir, eos_only_dir):
    bert = load_tokenizer(bert_dir)
    assert bert.pad_token == "[PAD]" and bert.padding_side == "right"
    gpt = load_tokenizer(eos_only_dir)
    assert gpt.pad_token == "<eos>" and gpt.pad_token_id == 0 and gpt.padding_side == "right"
    out = tokenize(["the answer is one two"], gpt, 3)
    assert out.ids[0].tolist() == [EOS_VOCAB[w] for w in ("is", "one", "two")]  # no specials
