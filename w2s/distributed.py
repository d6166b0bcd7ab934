"""Several processes (hosts) running one experiment: start-up and who writes the run store.

Every process runs the same program on its share of a global mesh (multi-controller JAX).
Batches, splits and initial weights are pure functions of the config, so each process builds
the same host arrays and hands JAX only its devices' shards. Process 0 alone reads the
store's claims and writes runs; the others follow its decisions, and all meet at a barrier
before anyone reads what process 0 wrote.
"""

from __future__ import annotations

import numpy as np


def initialize(cfg) -> None:
    """``jax.distributed.initialize`` from ``cfg.distributed``; nulls are detected (SLURM...)."""
    if not cfg.enabled:
        return
    import jax

    # Collectives between CPU processes (tests, CPU clusters); accelerators use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {
        k: cfg[k]
        for k in ("coordinator_address", "num_processes", "process_id")
        if cfg[k] is not None
    }
    jax.distributed.initialize(**kwargs)


def is_lead() -> bool:
    import jax

    return jax.process_index() == 0


def agree(flags: list[bool]) -> list[bool]:
    """Process 0's ``flags`` on every process."""
    import jax

    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(np.asarray(flags, dtype=np.int32))
    return [bool(x) for x in np.asarray(out)]


def barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def to_host(x) -> np.ndarray:
    """A (possibly multi-process) array as one numpy array on every process."""
    if getattr(x, "is_fully_addressable", True) or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
