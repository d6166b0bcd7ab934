"""What a ``w2s`` command shows on the console: one line per finished run, warnings, the table.

By default the console is quiet: the train loop's progress bar while a run trains, then one
``[done/total]`` line per run (trained or reused from the store). Library and w2s INFO logs
(orbax through absl, JAX, transformers, data and model loading) go to the job's log file
under ``results/logs`` only; ``verbose=true`` shows them on the console too. WARNING and
above are always shown.
"""

from __future__ import annotations

import logging
import re
import sys

from w2s.distributed import is_lead

_S2S_ROUND = re.compile(r"_s2s(\d+)$")


def configure_logging(verbose: bool) -> None:
    """Raise the console handlers to WARNING (INFO when verbose); the log file keeps INFO.

    Hydra's job logging gives the root logger a console handler and a file handler, both at
    INFO, and every library logs through the root logger, so only the console handlers are
    touched. transformers has its own stderr handler and does not propagate: it is routed
    through the root logger at INFO, so it follows the same rule and lands in the file too.
    Without a console handler (``run`` called from Python, pytest's capture handlers) nothing
    is changed, transformers included.
    """
    consoles = [h for h in logging.getLogger().handlers if _is_console(h)]
    for handler in consoles:
        handler.setLevel(logging.INFO if verbose else logging.WARNING)
    if consoles:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_default_handler()
        hf_logging.enable_propagation()
        hf_logging.set_verbosity_info()


def _is_console(handler: logging.Handler) -> bool:
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and getattr(handler, "stream", None) in streams
    )


def planned_runs(cfg) -> int:
    """How many runs ``Experiment.run`` goes through (trained or reused), as it decides them:
    weak runs also when only w2s runs are asked for, since they supervise them."""
    kinds = set(cfg.kinds)
    per_seed = 0
    if kinds & {"weak", "w2s"}:
        per_seed += 1 + len(cfg.extra_weak)
    if "ceiling" in kinds:
        per_seed += 1
    if "w2s" in kinds:
        per_seed += cfg.s2s_rounds + 1
    from w2s.pref.pairs import is_preference

    pref = getattr(cfg, "pref", None)
    if pref is not None and pref.stage == "dpo" and is_preference(cfg.task):
        per_seed += 2  # the chain's ceiling DPO and dDPO (w2s.pref.experiment)
        if pref.judge == "rm":
            per_seed += 1  # the weak reward model that judges
    return per_seed * len(cfg.seeds)


class Console:
    """The per-run lines of one experiment, printed by the lead process only.

    ``[3/9]`` counts every run the experiment goes through, reused ones included, so the
    prefix tells how far along a long experiment is.
    """

    def __init__(self, cfg):
        self.total = planned_runs(cfg)
        self.done = 0
        self.reused_runs = 0
        names = [cfg.weak.name, cfg.strong.name, *(m.name for m in cfg.extra_weak)]
        self._model_width = max(len(str(n)) for n in names)
        self._seed_width = max(len(str(s)) for s in cfg.seeds) if cfg.seeds else 1

    def reused(self, metrics: dict) -> None:
        """A run found finished in the store."""
        self.reused_runs += 1
        self._line(metrics, "reused")

    def finished(self, metrics: dict) -> None:
        """A run just trained and recorded: its time and steps (and, stopped early on its val
        loss, the step whose parameters it kept)."""
        tail = f"{metrics['train_seconds']:.1f} s  {metrics['steps']} steps"
        if metrics.get("stopped_at") is not None:
            tail += f" (val loss stopped falling; kept step {metrics['selected_step']})"
        elif metrics.get("early_stop"):
            tail += f" (the max_epochs budget; kept step {metrics['selected_step']})"
        self._line(metrics, tail)

    def format(self, metrics: dict, tail: str) -> str:
        self.done += 1
        width = len(str(max(self.total, self.done)))
        kind = metrics["kind"]
        model = metrics["weak_model"] if kind == "weak" else metrics["strong_model"]
        s2s = _S2S_ROUND.search(str(metrics.get("loss") or ""))
        if kind == "w2s" and s2s:
            kind = f"s2s{s2s.group(1)}"
        return (
            f"[{self.done:>{width}}/{self.total}] {kind:<7} {model:<{self._model_width}}  "
            f"seed {metrics['seed']:<{self._seed_width}}  acc {metrics['accuracy']:.4f}  {tail}"
        )

    def _line(self, metrics: dict, tail: str) -> None:
        line = self.format(metrics, tail)
        if is_lead():
            print(line, flush=True)  # flushed: stdout and the bar's stderr may share a pipe
