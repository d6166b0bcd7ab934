"""BERT family: parity with transformers' PyTorch BERT, on tiny random checkpoints and MiniLM."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from tests.helpers import max_diff_valid, right_padded, save_tiny, torch_hidden
from w2s.models import load_backbone, load_classifier

TOL = 1e-4
LENGTHS = [7, 3, 5, 1]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Weak supervisors can elicit strong capabilities.",
    "Is water wet?",
    "A considerably longer sentence, with punctuation; numbers like 3.14 and 2026; "
    "and rare words such as antidisestablishmentarianism, so the batch is padded on the right.",
    "ok",
]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    root = tmp_path_factory.mktemp("bert")
    base = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=40,
        layer_norm_eps=1e-12,
    )
    # classification head model: keys under "bert.", classifier tensors unused by the backbone
    clf = BertConfig(
        vocab_size=103,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        intermediate_size=64,
        max_position_embeddings=24,
        layer_norm_eps=1e-5,
        num_labels=3,
    )
    return {
        "base": save_tiny(BertModel, base, root / "base", seed=0),
        "clf": save_tiny(BertForSequenceClassification, clf, root / "clf", seed=1),
    }


def forward(model, ids, mask):
    return nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))


@pytest.mark.parametrize("name", ["base", "clf"])
def test_parity(ckpts, name, caplog):
    torch_model, d = ckpts[name]
    with caplog.at_level(logging.INFO, logger="w2s.models"):
        model = load_backbone(str(d))
    unused = " ".join(r.getMessage() for r in caplog.records if "not used" in r.getMessage())
    assert "pooler.dense.weight" in unused
    if name == "clf":
        with safe_open(str(d / "model.safetensors"), framework="numpy") as h:
            assert all(k.startswith(("bert.", "classifier.")) for k in h.keys())
        assert "classifier.weight" in unused
    ids, mask = right_padded(model.config.vocab_size, LENGTHS, seed=2)
    out = forward(model, ids, mask)
    assert out.shape == (4, 7, model.config.hidden_size)
    assert max_diff_valid(out, torch_hidden(torch_model, ids, mask), mask) <= TOL


def test_cls_default_pooling(ckpts):
    _, d = ckpts["base"]
    assert load_classifier(str(d), num_labels=2).pooling == "cls"


@pytest.fixture(scope="module")
def minilm_batch(minilm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    assert tok.padding_side == "right"
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert len(set(mask.sum(1).tolist())) > 2  # varied lengths, real right padding
    return ids, mask


def test_minilm_parity(minilm_dir, minilm_batch):
    """The real all-MiniLM-L6-v2 checkpoint (no prefix, 6 layers, hidden 384)."""
    from transformers import BertModel

    ids, mask = minilm_batch
    model = load_backbone(str(minilm_dir))
    assert (model.config.num_layers, model.config.hidden_size) == (6, 384)
    ref = BertModel.from_pretrained(minilm_dir).eval()
    assert max_diff_valid(forward(model, ids, mask), torch_hidden(ref, ids, mask), mask) <= TOL


def test_minilm_truncated(minilm_dir, minilm_batch, caplog):
    """``num_hidden_layers=1`` keeps layer 0; the other layers' tensors are logged as unused."""
    from transformers import BertModel

    ids, mask = minilm_batch
    with caplog.at_level(logging.INFO, logger="w2s.models"):
        model = load_backbone(str(minilm_dir), overrides={"num_hidden_layers": 1})
    assert len(model.layers) == 1
    unused = " ".join(r.getMessage() for r in caplog.records if "not used" in r.getMessage())
    assert "encoder.layer.1.attention.self.query.weight" in unused
    assert "encoder.layer.5.output.dense.weight" in unused
    assert "encoder.layer.0." not in unused
    ref = BertModel.from_pretrained(minilm_dir, num_hidden_layers=1).eval()
    assert max_diff_valid(forward(model, ids, mask), torch_hidden(ref, ids, mask), mask) <= TOL
