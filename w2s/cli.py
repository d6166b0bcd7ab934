"""``w2s``: one experiment end to end (weak -> ceiling -> w2s for every seed); ``-m`` sweeps.

JAX is imported inside the job, never before Hydra's launcher forks or submits jobs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from w2s.config import register

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("w2s")

register()


def summarize(table) -> str:
    """Per-seed accuracies and PGR, then the mean PGR with a 95 % bootstrap CI over seeds."""
    from analysis.pgr import pgr
    from analysis.stats import bootstrap_mean_ci

    lines = [f"{'seed':>6} {'weak':>8} {'ceiling':>8} {'w2s':>8} {'PGR':>8}"]
    if not {"weak", "ceiling", "w2s"} <= set(table.columns):
        return table.to_string(index=False)
    table = table.assign(pgr=pgr(table["w2s"], table["weak"], table["ceiling"]))
    for r in table.itertuples():
        lines.append(f"{r.seed:>6} {r.weak:>8.4f} {r.ceiling:>8.4f} {r.w2s:>8.4f} {r.pgr:>8.3f}")
    lo, hi = bootstrap_mean_ci(table["pgr"].to_numpy())
    lines.append(
        f"{'mean':>6} {table.weak.mean():>8.4f} {table.ceiling.mean():>8.4f} "
        f"{table.w2s.mean():>8.4f} {table.pgr.mean():>8.3f}"
    )
    lines.append(
        f"PGR = {table.pgr.mean():.3f}, 95% CI [{lo:.3f}, {hi:.3f}] "
        f"(percentile bootstrap over {len(table)} seeds; undefined where ceiling <= weak)"
    )
    return "\n".join(lines)


def run(cfg: DictConfig) -> int:
    from w2s.distributed import initialize, is_lead

    OmegaConf.resolve(cfg)

    cache = Path(str(cfg.cache_dir)).expanduser()
    os.environ.setdefault("W2S_CACHE", str(cache))
    _compilation_cache(cache)
    if cfg.dry_run:
        from w2s.plan import print_plan

        print_plan(cfg)
        return 0
    initialize(cfg.distributed)  # before anything touches a device
    from w2s.pipeline import Experiment

    compiling = _compile_timer()
    t0 = time.perf_counter()
    table = Experiment(cfg).run()
    wall = time.perf_counter() - t0
    if not is_lead():
        return 0
    print(f"\n{cfg.task.name}: weak={cfg.weak.name} strong={cfg.strong.name} loss={cfg.loss.name}")
    print(summarize(table))
    print(f"compiling: {compiling[0]:.1f} s of {wall:.1f} s ({100 * compiling[0] / wall:.1f} %)")
    print(f"runs written under {Path(cfg.results_dir).resolve()}/runs")
    return 0


_COMPILE_EVENTS = ("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration", "backend_compile_duration")


def _compile_timer() -> list[float]:
    """Seconds spent tracing, lowering and compiling, from JAX's own monitoring events."""
    from jax import monitoring

    total = [0.0]

    def listen(event: str, duration: float, **_) -> None:
        if event.endswith(_COMPILE_EVENTS):
            total[0] += duration

    monitoring.register_event_duration_secs_listener(listen)
    return total


def _compilation_cache(cache: Path) -> None:
    """Persist compiled programs between processes: a rerun or the next sweep job starts warm."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(cache / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _app(cfg: DictConfig) -> int:
    """A failure is one clear line and exit 1; in a sweep (-m) the other jobs still run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return run(cfg)
    except Exception as e:
        log.debug("failed", exc_info=True)  # the full trace stays in the job's log file
        print(f"w2s: error: {type(e).__name__}: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return 1
        sys.exit(1)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
