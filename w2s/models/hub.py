"""Find a checkpoint on disk (or on the Hugging Face hub) and read its tensors one at a time.

Tensors are read into numpy one by one, with plain file reads, so loading never holds a second
full copy of the weights (no torch state dict, no memory map).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
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
            raise CheckpointError(
                f"{local}: directory has no config.json, so it is not a checkpoint"
            )
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
        raise CheckpointError(
            f"{ckpt_dir}: directory has no config.json, so it is not a checkpoint"
        )
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


# safetensors dtype names -> numpy dtypes (ml_dtypes for the ones numpy lacks)
_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn,
    "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U64": np.uint64,
    "U32": np.uint32,
    "U16": np.uint16,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
_ALIGN = 64  # XLA's CPU client uses (does not copy) host buffers aligned like this


def _header(f: Path) -> tuple[int, dict]:
    """(offset of the data section, {key: {dtype, shape, data_offsets}}) of a safetensors file."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f}: not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    return 8 + n, header


def _aligned_empty(shape: list[int], dtype) -> np.ndarray:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def _read_tensor(fh, f: Path, start: int, key: str, info: dict) -> np.ndarray:
    """One tensor of the open file ``fh`` (data section at ``start``) into a fresh aligned array."""
    if info["dtype"] not in _DTYPES:
        raise CheckpointError(f"{f}: tensor '{key}' has unsupported dtype {info['dtype']}")
    array = _aligned_empty(info["shape"], _DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    if end - begin != array.nbytes:
        raise CheckpointError(
            f"{f}: tensor '{key}' spans {end - begin} bytes, its shape and dtype need {array.nbytes}"
        )
    fh.seek(start + begin)
    view, done = memoryview(array.reshape(-1).view(np.uint8)), 0
    while done < array.nbytes:  # one read returns at most ~2 GiB
        got = fh.readinto(view[done:])
        if not got:
            raise CheckpointError(f"{f}: file ends inside tensor '{key}'")
        done += got
    return array


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (key, array) one tensor at a time, in file order; bf16 arrives as ml_dtypes.bfloat16.

    Plain reads into a fresh 64-byte-aligned buffer, not a memory map: mapped pages would stay
    in the process's RSS until the file is closed (a second copy of the checkpoint), and an
    aligned buffer lets ``jax.device_put`` on CPU adopt it without a copy.
    """
    for f in files:
        start, header = _header(f)
        with open(f, "rb", buffering=0) as fh:
            for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
                yield key, _read_tensor(fh, f, start, key, info)


def tensor_entries(files: list[Path]) -> Iterator[tuple[Path, str, tuple[int, ...]]]:
    """(file, key, shape) of every tensor, from the headers only."""
    for f in files:
        for key, info in _header(f)[1].items():
            yield f, key, tuple(info["shape"])


def read_tensor(f: Path, key: str) -> np.ndarray:
    """One tensor of a safetensors file, read alone (a head among billions of weights)."""
    start, header = _header(f)
    if key not in header:
        raise CheckpointError(f"{f}: no tensor '{key}'")
    with open(f, "rb", buffering=0) as fh:
        return _read_tensor(fh, f, start, key, header[key])


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor without reading any data (header only)."""
    return {key: tuple(info["shape"]) for f in files for key, info in _header(f)[1].items()}
