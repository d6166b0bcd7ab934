"""Build a family's module without allocating, then fill it tensor by tensor from safetensors.

The module is first created abstractly (``nnx.eval_shape``); each checkpoint tensor is then
read, checked against the expected shape, cast and placed (sharded when a mesh is given). Peak
host memory is the parameters plus one tensor, not two copies of the checkpoint.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from w2s.models.hub import CheckpointError, iter_tensors, read_config, resolve, safetensors_files
from w2s.models.registry import Family, family_for
from w2s.models.sharding import named_sharding, path_str

log = logging.getLogger("w2s.models")


def strip_prefix(key: str, prefixes: tuple[str, ...]) -> str:
    for p in prefixes:
        if key.startswith(p):
            return key[len(p) :]
    return key


def build_config(name_or_path: str, overrides: dict | None = None):
    """(checkpoint dir, family, family config) for a local dir or hub id."""
    ckpt = resolve(name_or_path)
    hf = read_config(ckpt)
    family = family_for(hf.get("model_type"), str(ckpt / "config.json"))
    cfg = family.config_from_hf({**hf, **(overrides or {})})
    return ckpt, family, cfg


def abstract_module(family: Family, cfg, *, dtype, param_dtype, attention: str = "xla"):
    return nnx.eval_shape(
        lambda: family.module(
            cfg, dtype=dtype, param_dtype=param_dtype, attention=attention, rngs=nnx.Rngs(0)
        )
    )


def load_weights(module, family: Family, cfg, ckpt: Path, *, mesh=None) -> nnx.Module:
    """Fill an abstract module from the checkpoint's safetensors files."""
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    key_map = family.key_map(cfg)
    by_path = {tuple(path): (hf_key, fn) for hf_key, (path, fn) in key_map.items()}
    unmapped = sorted(path_str(p) for p in flat if p not in by_path)
    if unmapped:  # a bug in the family's key map, not in the checkpoint
        raise RuntimeError(f"{family.name}: parameters with no checkpoint key: {unmapped}")

    files = safetensors_files(ckpt)
    filled: dict[tuple, jax.Array] = {}
    unused: list[str] = []
    t0 = time.perf_counter()
    for raw_key, array in iter_tensors(files):
        key = strip_prefix(raw_key, family.prefixes)
        if key not in key_map:
            unused.append(raw_key)
            continue
        path, fn = key_map[key]
        if fn is not None:
            array = fn(array)
        want = flat[path].get_value()
        if tuple(array.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{ckpt}: tensor '{raw_key}' has shape {tuple(array.shape)}, "
                f"the model expects {tuple(want.shape)} for {path_str(path)}"
            )
        array = np.asarray(array, dtype=want.dtype)
        if mesh is not None:
            filled[path] = jax.device_put(
                array, named_sharding(path, array.shape, family.sharding, mesh)
            )
        else:  # device_put, unlike jnp.asarray, adopts an aligned host buffer on CPU (no copy)
            filled[path] = jax.device_put(array)
        del array
    first_key: dict[tuple, str] = {}  # one name per parameter when a family lists aliases
    for hf_key, (path, _) in key_map.items():
        first_key.setdefault(path, hf_key)
    missing = sorted(k for path, k in first_key.items() if path not in filled)
    if missing:
        raise CheckpointError(f"{ckpt}: checkpoint lacks {len(missing)} tensors: {missing}")
    if unused:
        log.info(
            "%s: %d checkpoint tensors not used by the backbone: %s", ckpt.name, len(unused), unused
        )
    log.info("%s: loaded %d tensors in %.1fs", ckpt.name, len(filled), time.perf_counter() - t0)
    for path, var in flat.items():
        flat[path] = var.replace(filled[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
