"""Seconds spent tracing, lowering and compiling, from JAX's own monitoring events.

One listener per process feeds a running total; callers read it before and after a piece of
work to split its wall time into compiling and running (the CLI's summary, a run's measured
inference time per example).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_COMPILE_EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")
_total = [0.0]
_lock = threading.Lock()
_registered = [False]


def _listen(event: str, duration: float, **_) -> None:
    if event.endswith(_COMPILE_EVENTS):
        with _lock:
            _total[0] += duration


def compile_seconds() -> float:
    """Compile seconds seen in this process since the first call of this function."""
    with _lock:
        if not _registered[0]:
            from jax import monitoring

            monitoring.register_event_duration_secs_listener(_listen)
            _registered[0] = True
        return _total[0]


@contextmanager
def timed() -> Iterator[dict]:
    """``with timed() as t: ...`` then ``t["seconds"]`` (wall) and ``t["compile"]`` (inside)."""
    c0, t0 = compile_seconds(), time.perf_counter()
    out = {"seconds": 0.0, "compile": 0.0}
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - t0
        out["compile"] = compile_seconds() - c0
