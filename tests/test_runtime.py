"""Importing w2s applies the CPU runtime settings (w2s/runtime.py), and the opt-out works."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import w2s, jax; from jax._src import xla_bridge; "
    "jax.numpy.ones(2).block_until_ready(); "
    "print(w2s.runtime.configure(), xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value)"
)


def _probe(**env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings: Linux only")
def test_import_applies_settings_before_the_cpu_client_starts():
    assert _probe() == "{'heap_pages': True, 'inline_dispatch': True} False"


def test_opt_out_keeps_defaults():
    assert _probe(W2S_CPU_RUNTIME="default") == (
        "{'heap_pages': False, 'inline_dispatch': False} True"
    )
