"""Causal LMs and generation against transformers on tiny random checkpoints.

``load_lm`` logits are compared with ``*ForCausalLM`` logits at non-pad positions; greedy
``generate`` with ``model.generate(do_sample=False)`` run on each prompt alone (no padding),
token for token; cached decoding with a full recompute of the same sequences.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.helpers import max_diff_valid, right_padded, save_tiny
from w2s.generate import _generate, bucket_length, generate
from w2s.models import CheckpointError, load_lm

torch = pytest.importorskip("torch")  # installed with the test extra; CI must not skip
transformers = pytest.importorskip("transformers")

VOCAB = 101
LENGTHS = [7, 3, 11, 5]  # one batch, one bucket (16), several lengths
NEW = 10
INIT = 0.15
TOL_F32 = 1e-4
# initializer_range 0.15: random tiny LMs at HF's 0.02 greedily repeat one token, which would
# let a wrong position or cache slot go unseen; sharper weights give varied continuations.
CASES = {
    "gpt2_tied": (
        "GPT2LMHeadModel",
        "GPT2Config",
        dict(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=64,
            initializer_range=INIT,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "llama_untied_gqa": (
        "LlamaForCausalLM",
        "LlamaConfig",
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            initializer_range=INIT,
        ),
    ),
    "qwen2_tied": (
        "Qwen2ForCausalLM",
        "Qwen2Config",
        dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_theta=1e6,
            initializer_range=INIT,
        ),
    ),
}


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """name -> (torch model, checkpoint dir)."""
    out = {}
    for name, (model_cls, config_cls, kw) in CASES.items():
        config = getattr(transformers, config_cls)(**kw)
        out[name] = save_tiny(
            getattr(transformers, model_cls), config, tmp_path_factory.mktemp(name)
        )
    return out


def _torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
        ).logits.numpy()


def _torch_greedy(model, ids, mask, new, eos=None):
    """transformers' greedy continuation of each prompt on its own (no padding)."""
    rows = []
    for b in range(len(ids)):
        n = int(mask[b].sum())
        with torch.no_grad():
            out = model.generate(
                torch.as_tensor(ids[b : b + 1, :n], dtype=torch.long),
                attention_mask=torch.ones(1, n, dtype=torch.long),
                max_new_tokens=new,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=0 if eos is None else eos,
            )
        rows.append(out[0, n:].numpy())
    return rows


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, scan, lms):
    model, ckpt = lms[name]
    ids, mask = right_padded(VOCAB, LENGTHS, seed=1)
    lm = load_lm(str(ckpt), scan_layers=scan)
    assert lm.tied == (name != "llama_untied_gqa")
    got = np.asarray(lm(ids, mask))
    assert got.dtype == np.float32 and got.shape == (*ids.shape, VOCAB)
    diff = max_diff_valid(got, _torch_logits(model, ids, mask), mask)
    print(f"\n{name} {scan=}: max |logits - torch| = {diff:.2e}")
    assert diff <= TOL_F32


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("name", list(CASES))
def test_greedy_matches_transformers_row_by_row(name, scan, lms):
    model, ckpt = lms[name]
    ids, mask = right_padded(VOCAB, LENGTHS, seed=2)
    lm = load_lm(str(ckpt), scan_layers=scan)
    got = np.asarray(generate(lm, ids, mask, NEW))
    assert got.shape == (len(LENGTHS), NEW) and got.dtype == np.int32
    want = _torch_greedy(model, ids, mask, NEW)
    for b, w in enumerate(want):
        np.testing.assert_array_equal(got[b], w, err_msg=f"row {b}")
    # the comparison has teeth: continuations vary within and across rows
    assert len(np.unique(got)) >= 8, got


@pytest.mark.parametrize("name", ["gpt2_tied", "llama_untied_gqa"])
def test_greedy_stops_at_eos_like_transformers(name, lms):
    model, ckpt = lms[name]
    ids, mask = right_padded(VOCAB, LENGTHS, seed=2)
    free = _torch_greedy(model, ids, mask, NEW)
    eos = int(free[0][3])  # a token row 0 emits at its 4th step
    lm = load_lm(str(ckpt))
    got = np.asarray(generate(lm, ids, mask, NEW, eos_id=eos))
    want = _torch_greedy(model, ids, mask, NEW, eos=eos)
    stopped = 0
    for b, w in enumerate(want):
        hits = np.flatnonzero(w == eos)
        end = hits[0] + 1 if len(hits) else NEW  # up to and including the first EOS
        np.testing.assert_array_equal(got[b, :end], w[:end], err_msg=f"row {b}")
        assert (got[b, end:] == eos).all(), f"row {b} after EOS: {got[b]}"
        stopped += len(hits) > 0
    assert stopped >= 1 and (got[0, 3] == eos)


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("name", list(CASES))
def test_cached_decoding_equals_full_recompute(name, temperature, lms):
    """Each new token's log-probability from the KV-cached step equals the log-softmax of a
    full forward pass over prompt + generated tokens."""
    _, ckpt = lms[name]
    ids, mask = right_padded(VOCAB, LENGTHS, seed=3)
    lm = load_lm(str(ckpt), scan_layers=True)
    tokens, logps = generate(
        lm, ids, mask, NEW, temperature=temperature, seed=5, return_logprobs=True
    )
    tokens, logps = np.asarray(tokens), np.asarray(logps)
    for b, n in enumerate(LENGTHS):
        seq = np.concatenate([ids[b, :n], tokens[b]])[None]
        full = jax.nn.log_softmax(np.asarray(lm(seq, np.ones_like(seq))), -1)[0]
        ref = np.asarray(full)[np.arange(n - 1, n - 1 + NEW), tokens[b]]
        np.testing.assert_allclose(logps[b], ref, atol=1e-5, err_msg=f"row {b}")


def test_sampling_reproducible_and_nucleus(lms):
    _, ckpt = lms["llama_untied_gqa"]
    ids, mask = right_padded(VOCAB, LENGTHS, seed=4)
    lm = load_lm(str(ckpt))
    a = np.asarray(generate(lm, ids, mask, NEW, temperature=1.0, seed=0))
    b = np.asarray(generate(lm, ids, mask, NEW, temperature=1.0, seed=0))
    c = np.asarray(generate(lm, ids, mask, NEW, temperature=1.0, seed=1))
    greedy = np.asarray(generate(lm, ids, mask, NEW))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any() and (a != greedy).any()
    # a nucleus too small for a second token leaves only the most likely one: greedy
    tiny = np.asarray(generate(lm, ids, mask, NEW, temperature=1.0, top_p=1e-6, seed=3))
    np.testing.assert_array_equal(tiny, greedy)


def test_one_compile_per_length_bucket(lms):
    _, ckpt = lms["qwen2_tied"]
    lm = load_lm(str(ckpt))
    assert bucket_length(5) == bucket_length(16) == 16 and bucket_length(17) == 32
    ids, mask = right_padded(VOCAB, [5, 2, 4], seed=6)
    generate(lm, ids, mask, 4)
    before = _generate._cache_size()
    for lengths in ([9, 3, 1], [16, 12, 7], [2, 2, 2]):  # other lengths, same bucket
        ids, mask = right_padded(VOCAB, lengths, seed=7)
        generate(lm, ids, mask, 4)
    assert _generate._cache_size() == before
    ids, mask = right_padded(VOCAB, [20, 3, 1], seed=8)
    generate(lm, ids, mask, 4)
    assert _generate._cache_size() == before + 1


def test_bad_inputs_refused(lms, tmp_path):
    _, ckpt = lms["gpt2_tied"]
    lm = load_lm(str(ckpt))
    ids, mask = right_padded(VOCAB, [4, 2], seed=0)
    with pytest.raises(ValueError, match="right-padded"):
        generate(lm, ids, mask[:, ::-1], 3)
    with pytest.raises(ValueError, match="n_positions"):
        generate(lm, ids, mask, 60)  # 16-token bucket + 60 > 64 positions

    bert = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    _, bert_dir = save_tiny(transformers.BertModel, bert, tmp_path / "bert")
    with pytest.raises(ValueError, match="not a causal LM"):
        load_lm(str(bert_dir))


def test_untied_checkpoint_without_lm_head_is_refused(lms, tmp_path):
    import json
    import shutil

    _, ckpt = lms["qwen2_tied"]  # its safetensors hold no lm_head.weight
    untied = tmp_path / "untied"
    shutil.copytree(ckpt, untied)
    cfg = json.loads((untied / "config.json").read_text())
    (untied / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match="lm_head.weight"):
        load_lm(str(untied))
