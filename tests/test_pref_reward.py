"""Reward models: parity with transformers' *ForSequenceClassification(num_labels=1)."""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import right_padded, save_tiny
from w2s.models import CheckpointError
from w2s.pref.reward import load_reward_model, rewards

torch = pytest.importorskip("torch")  # installed with the test extra; CI must not skip
transformers = pytest.importorskip("transformers")

LENGTHS = [9, 4, 6, 1, 7]
TOL = 1e-5
PAD = 0  # right_padded pads with 0 and draws real tokens from 1..V-1

LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA
    initializer_range=0.1,
    pad_token_id=PAD,
)

RM = dict(num_labels=1)  # transformers' default is 2
GPT2 = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, pad_token_id=PAD)
GPT2.update(bos_token_id=1, eos_token_id=1)  # GPT-2's 50256 is outside the tiny vocabulary

# name -> (model class, config class, config kwargs)
CASES = {
    "gpt2": ("GPT2ForSequenceClassification", "GPT2Config", {**GPT2, **RM}),
    "llama_gqa": ("LlamaForSequenceClassification", "LlamaConfig", {**LLAMA, **RM}),
    "qwen2": ("Qwen2ForSequenceClassification", "Qwen2Config", {**LLAMA, **RM, "rope_theta": 1e6}),
}


def _save(model_cls, config_cls, kw, out, seed=0):
    """A tiny random checkpoint; a sequence classifier's score gets std 0.5, so rewards are
    O(1) and a head loaded wrongly (or not at all) shows far above TOL."""
    config = getattr(transformers, config_cls)(**kw)
    model, out = save_tiny(getattr(transformers, model_cls), config, out, seed=seed)
    if hasattr(model, "score"):
        gen = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            model.score.weight.copy_(torch.randn(model.score.weight.shape, generator=gen) * 0.5)
        assert model.score.weight.abs().min() > 0
        model.save_pretrained(out, safe_serialization=True)
    return model, out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        name: _save(*case, tmp_path_factory.mktemp(name), seed=i)
        for i, (name, case) in enumerate(CASES.items())
    }


def _torch_rewards(model, ids, mask):
    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
        )
    return out.logits[:, 0].float().numpy()


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_transformers(name, checkpoints, caplog):
    model, ckpt = checkpoints[name]
    vocab = model.config.vocab_size
    ids, mask = right_padded(vocab, LENGTHS, seed=3)
    assert not (ids[mask.astype(bool)] == PAD).any()  # torch finds the last token by pad id
    with caplog.at_level(logging.INFO, logger="w2s.pref"):
        rm = load_reward_model(str(ckpt))
    assert "score head" in caplog.text
    assert rm.pooling == "last"
    assert all(pat.startswith("backbone/") for pat, _ in rm.sharding_rules)
    np.testing.assert_array_equal(rm.head.bias[...], 0.0)
    np.testing.assert_array_equal(
        rm.head.kernel[...], model.score.weight.detach().numpy().T
    )  # [1, H] -> [H, 1]

    ours = rewards(rm, jnp.asarray(ids), jnp.asarray(mask))
    assert ours.shape == (len(LENGTHS),) and ours.dtype == jnp.float32
    want = _torch_rewards(model, ids, mask)
    assert np.abs(want).max() > 0.1  # a real head, not ~0
    diff = float(np.abs(np.asarray(ours, np.float64) - want).max())
    print(f"\n{name}: max |jax - torch| reward = {diff:.2e} (|reward| <= {np.abs(want).max():.2f})")
    assert diff <= TOL


def test_pad_positions_do_not_change_rewards(checkpoints):
    _, ckpt = checkpoints["llama_gqa"]
    rm = load_reward_model(str(ckpt))
    ids, mask = right_padded(128, LENGTHS, seed=4)
    junk = np.random.default_rng(5).integers(1, 128, size=ids.shape).astype(ids.dtype)
    other = np.where(mask.astype(bool), ids, junk)
    assert (other != ids).any()
    a = np.asarray(rewards(rm, jnp.asarray(ids), jnp.asarray(mask)))
    b = np.asarray(rewards(rm, jnp.asarray(other), jnp.asarray(mask)))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # 0 measured on CPU


def test_checkpoint_read_once(checkpoints, monkeypatch):
    """The backbone's pass reads each tensor once; the score head is read on its own."""
    import w2s.models.hub as hub
    import w2s.models.loading as loading

    _, ckpt = checkpoints["gpt2"]
    seen = []

    def counting(files):
        for key, array in real(files):
            seen.append(key)
            yield key, array

    real = hub.iter_tensors
    monkeypatch.setattr(loading, "iter_tensors", counting)
    monkeypatch.setattr(hub, "iter_tensors", counting)
    load_reward_model(str(ckpt))
    assert sorted(seen) == sorted(hub.tensor_shapes([ckpt / "model.safetensors"]))


def test_bf16_sharded_checkpoint(checkpoints, tmp_path):
    """The head is found in whichever shard holds it, and bf16 is read as bf16 (then f32)."""
    import copy

    model = copy.deepcopy(checkpoints["qwen2"][0]).to(torch.bfloat16)  # the fixture's stays f32
    out = tmp_path / "bf16"
    model.save_pretrained(out, safe_serialization=True, max_shard_size="40KB")
    assert (out / "model.safetensors.index.json").is_file()
    rm = load_reward_model(str(out))
    want = model.score.weight.detach().float().numpy().T
    np.testing.assert_array_equal(rm.head.kernel[...], want)


def test_base_lm_gives_zero_head(tmp_path, caplog):
    """A causal LM (no score head): a fresh reward model, every reward exactly 0."""
    _, ckpt = _save("LlamaForCausalLM", "LlamaConfig", LLAMA, tmp_path / "lm")
    with caplog.at_level(logging.INFO, logger="w2s.pref"):
        rm = load_reward_model(str(ckpt))
    assert "no score head" in caplog.text
    ids, mask = right_padded(128, LENGTHS)
    out = np.asarray(rewards(rm, jnp.asarray(ids), jnp.asarray(mask)))
    assert out.shape == (len(LENGTHS),)
    np.testing.assert_array_equal(out, 0.0)


def test_multi_label_score_head_refused(tmp_path):
    kw = {**LLAMA, "num_labels": 2}
    _, ckpt = _save("LlamaForSequenceClassification", "LlamaConfig", kw, tmp_path / "two")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*score\.weight.*\(2, 64\)"):
        load_reward_model(str(ckpt))
