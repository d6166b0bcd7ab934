"""Find a checkpoint on disk (or on the Hugging Face hub) and read its tensors one at a time.

Tensors are read with ``safe_open`` into numpy, one by one, so loading never holds a second
full copy of the weights (no torch state dict).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger("w2s.models")

HUB_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file or tensor."""


def resolve(name_or_path: str | os.PathLike) -> Path:
    """Local directory, or a hub id downloaded into the hub cache; either way a directory."""
    name = str(name_or_path)
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CheckpointError(f"{local}: directory has no config.json, so it is not a checkpoint")
        return local
    if local.exists():
        raise CheckpointError(f"{local}: expected a checkpoint directory, found a file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: no such checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown id, gated repo ...
        raise CheckpointError(
            f"could not get '{name}' from the Hugging Face hub ({type(e).__name__}: {e}). "
            "Offline, pass a local checkpoint directory instead (see `w2s-fetch`)."
        ) from e


def read_config(ckpt_dir: Path) -> dict:
    path = ckpt_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: directory has no config.json, so it is not a checkpoint")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def safetensors_files(ckpt_dir: Path) -> list[Path]:
    """The checkpoint's weight files: a sharded index, else the single ``model.safetensors``."""
    index = ckpt_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({ckpt_dir / f for f in weight_map.values()})
        absent = [str(f) for f in files if not f.is_file()]
        if absent:
            raise CheckpointError(f"{index}: names shards that are missing: {absent}")
        return files
    single = ckpt_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(
        f"{ckpt_dir}: no model.safetensors or model.safetensors.index.json "
        "(only safetensors checkpoints are read)"
    )


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, array) one tensor at a time; bf16 arrives as ml_dtypes.bfloat16."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="numpy") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor without reading any data (header only)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes
