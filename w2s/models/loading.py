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
from w2s.models.stack import stacked_rules, unstacked_path

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


def abstract_module(
    family: Family,
    cfg,
    *,
    dtype,
    param_dtype,
    attention: str = "xla",
    remat: str = "none",
    scan_layers: bool = False,
):
    return nnx.eval_shape(
        lambda: family.module(
            cfg,
            dtype=dtype,
            param_dtype=param_dtype,
            attention=attention,
            remat=remat,
            scan_layers=scan_layers,
            rngs=nnx.Rngs(0),
        )
    )


def family_rules(family: Family, scan_layers: bool):
    """The family's sharding rules for its unrolled or scanned parameter layout."""
    return stacked_rules(family.sharding) if scan_layers else family.sharding


def _targets(key_map, flat) -> dict[str, tuple[tuple, int | None]]:
    """HF key -> (parameter path, layer slot): the slot is set when the layers are scanned,
    where layer ``i``'s tensor fills index ``i`` of a stacked parameter."""
    out = {}
    for hf_key, (path, _) in key_map.items():
        out[hf_key] = (path, None) if path in flat else unstacked_path(path)
    return out


def load_weights(
    module, family: Family, cfg, ckpt: Path, *, mesh=None, rules=None, key_map=None
) -> nnx.Module:
    """Fill an abstract module from the checkpoint's safetensors files.

    ``rules``: sharding rules matching the module's layout (default: the family's, unrolled);
    ``key_map``: HF key -> parameter path of ``module`` (default: the family's backbone map).
    """
    rules = family.sharding if rules is None else rules
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    key_map = family.key_map(cfg) if key_map is None else key_map
    targets = _targets(key_map, flat)
    unmapped = sorted(path_str(p) for p in set(flat) - {path for path, _ in targets.values()})
    if unmapped:  # a bug in the family's key map, not in the checkpoint
        raise RuntimeError(f"{family.name}: parameters with no checkpoint key: {unmapped}")

    def place(path, array):
        if mesh is not None:
            return jax.device_put(array, named_sharding(path, array.shape, rules, mesh))
        # device_put, unlike jnp.asarray, adopts an aligned host buffer on CPU (no copy)
        return jax.device_put(array)

    files = safetensors_files(ckpt)
    filled: dict[tuple, jax.Array] = {}
    staged: dict[tuple, tuple[np.ndarray, set[int]]] = {}  # stacked parameters being filled
    read: set[tuple] = set()  # (path, slot) targets that a tensor has filled
    unused: list[str] = []
    n_read, t0 = 0, time.perf_counter()
    for raw_key, array in iter_tensors(files):
        key = strip_prefix(raw_key, family.prefixes)
        if key not in key_map:
            unused.append(raw_key)
            continue
        n_read += 1
        fn = key_map[key][1]
        path, slot = targets[key]
        if fn is not None:
            array = fn(array)
        want = flat[path].get_value()
        want_shape = tuple(want.shape) if slot is None else tuple(want.shape[1:])
        read.add((path, slot))
        if tuple(array.shape) != want_shape:
            raise CheckpointError(
                f"{ckpt}: tensor '{raw_key}' has shape {tuple(array.shape)}, "
                f"the model expects {want_shape} for {path_str(key_map[key][0])}"
            )
        if slot is None:
            filled[path] = place(path, np.asarray(array, dtype=want.dtype))
        else:
            host, slots = staged.setdefault(path, (np.empty(want.shape, want.dtype), set()))
            host[slot] = array
            slots.add(slot)
            if len(slots) == want.shape[0]:  # every layer read: place the stacked array
                filled[path] = place(path, host)
                del staged[path]
        del array
    first_key: dict[tuple, str] = {}  # one name per parameter when a family lists aliases
    for hf_key, target in targets.items():
        first_key.setdefault(target, hf_key)
    missing = sorted(k for target, k in first_key.items() if target not in read)
    if missing:
        raise CheckpointError(f"{ckpt}: checkpoint lacks {len(missing)} tensors: {missing}")
    if unused:
        log.info(
            "%s: %d checkpoint tensors not used by the backbone: %s", ckpt.name, len(unused), unused
        )
    log.info("%s: loaded %d tensors in %.1fs", ckpt.name, n_read, time.perf_counter() - t0)
    for path, var in flat.items():
        flat[path] = var.replace(filled[path])
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
