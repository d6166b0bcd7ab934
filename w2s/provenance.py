"""Where a run's numbers came from: the code (package version, git commit) and each model's
checkpoint (hub revision or a hash of its files), and how far training moved the backbone."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def code() -> dict:
    """``code_version`` and, in a git checkout, ``git_commit`` and ``git_dirty`` (tracked files)."""
    try:
        version = metadata.version("w2s")
    except metadata.PackageNotFoundError:
        version = None
    out = {"code_version": version, "git_commit": None, "git_dirty": None}
    if not (PACKAGE_ROOT / ".git").exists():
        return out
    try:
        commit = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return out
    return {**out, "git_commit": commit, "git_dirty": bool(dirty)}


@functools.cache
def checkpoint(path: str) -> str:
    """The hub snapshot's revision when ``path`` is in the hub cache, else a sha256 of the
    checkpoint's config and weight files (read in 1 MiB blocks)."""
    p = Path(path).resolve()
    if p.parent.name == "snapshots":  # <cache>/models--org--name/snapshots/<revision>
        return f"revision:{p.name}"
    h = hashlib.sha256()
    files = sorted(
        f for f in p.iterdir() if f.suffix in (".json", ".safetensors") and f.is_file()
    )
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"


def _backbone_params(model: nnx.Module) -> list:
    return jax.tree.leaves(nnx.state(model.backbone, nnx.Param))


@jax.jit
def _sq_distance_and_norm(after: list, before: list) -> tuple[jax.Array, jax.Array]:
    """One compiled reduction over every parameter (not one small program per shape)."""
    diff = sum(jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)
               for a, b in zip(after, before, strict=True))
    norm = sum(jnp.sum(b.astype(jnp.float32) ** 2) for b in before)
    return diff, norm


def backbone_change(pretrained: nnx.Module, trained: nnx.Module) -> float:
    """Relative L2 distance ``||θ − θ0|| / ||θ0||`` of the backbone's parameters (0: unmoved).

    Computed in float32 over every backbone parameter; the zero-initialised head is left out,
    so a run whose backbone never trained reads 0 whatever its head learned.
    """
    before, after = _backbone_params(pretrained), _backbone_params(trained)
    if not before:
        return 0.0
    diff, norm = (float(x) for x in _sq_distance_and_norm(after, before))
    return float(np.sqrt(diff / norm)) if norm > 0 else float("nan")
