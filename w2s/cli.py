"""``w2s``: one experiment end to end (weak -> ceiling -> w2s for every seed); ``-m`` sweeps.

JAX is imported inside the job, never before Hydra's launcher forks or submits jobs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from w2s.config import register
from w2s.console import configure_logging
from w2s.store import RunStore
from w2s.summary import summarize

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("w2s")

register()


def run(cfg: DictConfig) -> int:
    from w2s.distributed import initialize, is_lead

    OmegaConf.resolve(cfg)
    # transformers' import-time advice that PyTorch is absent: w2s uses only its tokenizers
    # and configs, so without torch (the plain install) the line is noise. configure_logging
    # imports transformers, so this comes first.
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    configure_logging(cfg.verbose)  # after Hydra's job logging, before anything logs

    cache = Path(str(cfg.cache_dir)).expanduser()
    os.environ.setdefault("W2S_CACHE", str(cache))
    _compilation_cache(cache)
    if cfg.dry_run:
        from w2s.plan import print_plan

        print_plan(cfg)
        return 0
    initialize(cfg.distributed)  # before anything touches a device
    from w2s.timing import timed

    with timed() as t:
        table = experiment(cfg).run()
    compiling, wall = [t["compile"]], t["seconds"]
    if not is_lead():
        return 0
    print(f"\n{cfg.task.name}: weak={cfg.weak.name} strong={cfg.strong.name} loss={cfg.loss.name}")
    print(summarize(table, RunStore(cfg.results_dir)))
    if "w2s_dpo" in table:  # the dSFT -> dDPO chain: the same summary for the DPO stage
        dpo = table[["seed", "weak", "weak_run_id"]].assign(
            ceiling=table["ceiling_dpo"], ceiling_run_id=table["ceiling_dpo_run_id"],
            w2s=table["w2s_dpo"], w2s_run_id=table["w2s_dpo_run_id"])
        print(f"\nafter DPO: ceiling = SFT + DPO on B's true pairs, w2s = dSFT + dDPO "
              f"({cfg.pref.judge} judge)")
        print(summarize(dpo, RunStore(cfg.results_dir)))
    print(f"compiling: {compiling[0]:.1f} s of {wall:.1f} s ({100 * compiling[0] / wall:.1f} %)")
    print(f"runs written under {Path(cfg.results_dir).resolve()}/runs")
    return 0


def experiment(cfg: DictConfig):
    """The orchestrator for the task: classification (``w2s.pipeline``), language-model runs
    for generative tasks (``w2s.lm.experiment``), or preference runs for pairwise tasks
    (``w2s.pref.experiment``: reward models, or the dSFT -> dDPO chain)."""
    from w2s.lm.tasks import is_generative
    from w2s.pref.pairs import is_preference

    if is_preference(cfg.task):
        from w2s.pref.experiment import DPOExperiment, RMExperiment

        return DPOExperiment(cfg) if cfg.pref.stage == "dpo" else RMExperiment(cfg)
    if is_generative(cfg.task):
        from w2s.lm.experiment import LMExperiment

        return LMExperiment(cfg)
    from w2s.pipeline import Experiment

    return Experiment(cfg)


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
        # INFO, not DEBUG: the job's log file (at INFO) keeps the full trace; the console
        # shows it with verbose=true only
        log.info("failed", exc_info=True)
        print(f"w2s: error: {type(e).__name__}: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return 1
        sys.exit(1)


def main() -> None:
    _app()


if __name__ == "__main__":
    main()
