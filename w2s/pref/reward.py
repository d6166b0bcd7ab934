"""Reward models: a backbone with a one-output linear head whose output is the scalar reward.

Equal to transformers' ``*ForSequenceClassification(num_labels=1)``: the reward is the head
applied to the pooled hidden state (for decoders the last non-pad token of a right-padded row).
A checkpoint saved by such a model (GPT-2, Llama, Qwen2, Mistral keep the head as a top-level
``score.weight`` [1, H], without bias) brings its head; any other checkpoint (a base LM to be
trained into a reward model) gets the zero head, so every untrained reward is exactly 0.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from w2s.models import load_classifier
from w2s.models.classifier import Classifier
from w2s.models.hub import CheckpointError, read_tensor, safetensors_files, tensor_entries
from w2s.models.loading import build_config, strip_prefix

__all__ = ["load_reward_model", "rewards"]

log = logging.getLogger("w2s.pref")

SCORE_KEY = "score.weight"  # transformers' sequence-classification head (after the prefix)
SCORE_BIAS = "score.bias"  # never saved by transformers; loaded if a checkpoint has one


def _find(files: list[Path], key: str, prefixes: tuple[str, ...]):
    """(file, raw key, shape) of the tensor named ``key`` once the architecture prefix is
    removed, from the headers only; None when no file has it."""
    for f, raw, shape in tensor_entries(files):
        if strip_prefix(raw, prefixes) == key:
            return f, raw, shape
    return None


def _score_head(ckpt: Path, prefixes: tuple[str, ...], hidden: int):
    """(kernel [H,1], bias [1] or None) from the checkpoint's score head, or None without one."""
    files = safetensors_files(ckpt)
    found = _find(files, SCORE_KEY, prefixes)
    if found is None:
        return None
    f, raw, shape = found
    if shape != (1, hidden):
        what = (
            f"{shape[0]} outputs (a {shape[0]}-label classifier), a reward model needs 1"
            if len(shape) == 2 and shape[0] != 1
            else f"the reward model expects (1, {hidden})"
        )
        raise CheckpointError(f"{f}: score head '{raw}' has shape {shape}: {what}")
    kernel = read_tensor(f, raw).astype(np.float32).T  # torch Linear [1, H] -> kernel [H, 1]
    bias = _find(files, SCORE_BIAS, prefixes)
    if bias is not None:
        f_b, raw_b, shape_b = bias
        if shape_b != (1,):
            raise CheckpointError(
                f"{f_b}: score bias '{raw_b}' has shape {shape_b}, a reward model expects (1,)"
            )
        bias = read_tensor(f_b, raw_b).astype(np.float32)
    return kernel, bias


def load_reward_model(
    name_or_path: str,
    *,
    pooling: str | None = None,
    dtype: str = "float32",
    compute_dtype: str | None = None,
    overrides: dict | None = None,
    attention: str = "xla",
    remat: str = "none",
    scan_layers: bool = False,
    mesh=None,
) -> Classifier:
    """A ``Classifier`` with one output, the reward, [B,1] float32; see ``load_classifier`` for
    the settings. Its head is the checkpoint's score head, if it has one, else zero."""
    ckpt, family, cfg = build_config(name_or_path, overrides)
    # the head first: a checkpoint that cannot be a reward model fails before the backbone loads
    head = _score_head(ckpt, family.prefixes, cfg.hidden_size)
    model = load_classifier(
        str(ckpt),
        1,
        pooling=pooling,
        dtype=dtype,
        compute_dtype=compute_dtype,
        overrides=overrides,
        attention=attention,
        remat=remat,
        scan_layers=scan_layers,
        mesh=mesh,
    )
    if head is None:
        log.info("%s: no score head in the checkpoint; reward head initialised to zero", ckpt.name)
        return model
    kernel, bias = head
    model.head.kernel.set_value(jnp.asarray(kernel, jnp.float32))
    if bias is not None:
        model.head.bias.set_value(jnp.asarray(bias, jnp.float32))
    log.info("%s: loaded the checkpoint's score head as the reward head", ckpt.name)
    return model


def rewards(model: Classifier, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Right-padded input_ids, attention_mask [B,S] -> rewards [B] (float32)."""
    return model(input_ids, attention_mask)[:, 0]
