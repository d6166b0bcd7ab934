"""Test utilities: tiny random HF checkpoints made with transformers + torch, and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_tiny(model_cls, config, out_dir: Path, seed: int = 0):
    """Instantiate ``model_cls(config)`` with seeded random weights, save it, return (model, dir)."""
    import torch

    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # non-trivial norms and biases, so a missed one shows in parity
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    return model, out_dir


def right_padded(
    vocab_size: int, lengths: list[int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random ids [B, max(lengths)] with right padding (pad id 0) and the attention mask."""
    rng = np.random.default_rng(seed)
    seq = max(lengths)
    ids = rng.integers(1, vocab_size, size=(len(lengths), seq)).astype(np.int32)
    mask = (np.arange(seq)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)
    return ids * mask, mask


def torch_hidden(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers' ``last_hidden_state`` for the batch (base model of any head model)."""
    import torch

    base = getattr(model, model.base_model_prefix, model)
    with torch.no_grad():
        out = base(
            input_ids=torch.as_tensor(ids, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
        )
    return out.last_hidden_state.float().numpy()


def max_diff_valid(a, b, mask: np.ndarray) -> float:
    """Max |a - b| over non-pad positions."""
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d[np.asarray(mask, bool)].max())
