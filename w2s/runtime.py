"""Process-wide settings that make XLA:CPU steps cheaper; applied when ``w2s`` is imported.

An XLA:CPU execution allocates its temporaries as one block (tens to hundreds of MB for a
train step). With JAX's asynchronous CPU dispatch that block is allocated on a worker thread,
whose glibc arena cannot hold it, so it is mmap'ed and unmapped on every step and the step
page-faults through all of it again: about 15 % of a MiniLM train step on two cores and a
quarter of a small vmapped one (``benchmarks/RESULTS.md``). Two settings fix it together:

- CPU computations run inline on the calling thread (``jax_cpu_enable_async_dispatch``
  off), so the block comes from the main heap; the train loop builds the next batch on a
  helper thread meanwhile, which keeps host work overlapped with the step;
- glibc serves blocks below 2 GiB from the heap and returns freed memory to the OS only past
  2 GiB free, so the block's pages stay mapped from step to step.

Accelerators are untouched: the dispatch flag only concerns the CPU backend, and host
allocations there are small. ``W2S_CPU_RUNTIME=default`` keeps JAX's and glibc's defaults.
Both settings must come before JAX creates its CPU client, hence the import-time call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIMIT = 2**31 - 1  # mallopt takes an int

_applied: dict[str, bool] | None = None


def _keep_heap_pages() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(opt, _LIMIT) == 1 for opt in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))


def _inline_cpu_dispatch() -> bool:
    import jax
    from jax._src import xla_bridge

    flag = getattr(xla_bridge, "_CPU_ENABLE_ASYNC_DISPATCH", None)
    if xla_bridge.backends_are_initialized():  # too late to change; report what is in force
        return flag is not None and not flag.value
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True


def configure() -> dict[str, bool]:
    """Apply both settings once; returns which are in effect."""
    global _applied
    if _applied is None:
        if os.environ.get("W2S_CPU_RUNTIME", "").lower() == "default":
            _applied = {"heap_pages": False, "inline_dispatch": False}
        else:
            _applied = {
                "heap_pages": _keep_heap_pages(),
                "inline_dispatch": _inline_cpu_dispatch(),
            }
    return _applied
