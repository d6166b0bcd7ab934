"""The run-store protocol shared by the LM and preference orchestrators: one run is claimed,
reused when finished (with the artifacts later runs read from it), or trained and recorded;
a failed run is marked failed with its reason, never left looking finished."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf


class StoredRuns:
    """Mixin: ``self.cfg``, ``self.store``, ``self.console`` and ``_train_and_record(spec,
    splits, run_dir) -> metrics`` come from the orchestrator; ``spec`` has ``kind``, ``rid``,
    ``identity`` and ``header``."""

    artifacts: tuple[str, ...] = ()  # files a run writes besides metrics and predictions

    def keeps_weights(self, spec) -> bool:
        """Whether the run keeps its trained weights: weak runs always (later runs consult
        them), the kinds in ``save_weights``, and whatever a subclass's later runs start from."""
        return spec.kind == "weak" or spec.kind in self.cfg.save_weights

    def fit(self, spec, splits) -> dict:
        """Reuse the finished run, or train, evaluate and record it (failed runs say why)."""
        with self.store.claim((spec.kind, spec.rid)):
            done = None if self.cfg.force else self.store.finished(spec.kind, spec.rid)
            d = self.store.dir(spec.kind, spec.rid)
            if done is not None and self._complete(spec, d):
                self.console.reused(done)
                return done
            config = {**spec.identity, "header": spec.header,
                      "train": OmegaConf.to_container(self.cfg.train, resolve=True)}
            if self.cfg.force:
                self.store.clear_weights(spec.kind, spec.rid)
            for name in self.artifacts:
                (d / name).unlink(missing_ok=True)
            self.store.start(spec.kind, spec.rid, config, spec.header)
            try:
                metrics = self._train_and_record(spec, splits, d)
            except BaseException as e:
                self.store.fail(d, spec.header, e)
                raise
        self.console.finished(metrics)
        return metrics

    def run(self) -> pd.DataFrame:
        """One row per seed: test accuracy (or exact match) of weak, ceiling and w2s, and their
        run ids; ``gt_spec`` / ``w2s_spec`` / ``splits`` come from the orchestrator."""
        cfg, out = self.cfg, []
        for seed in cfg.seeds:
            splits = self.splits(seed)
            row: dict = {"seed": seed}
            weak = None
            if {"weak", "w2s"} & set(cfg.kinds):
                weak = self.fit(self.gt_spec("weak", cfg.weak, seed, splits), splits)
                row.update(weak=weak["accuracy"], weak_run_id=weak["run_id"])
            if "ceiling" in cfg.kinds:
                c = self.fit(self.gt_spec("ceiling", cfg.strong, seed, splits), splits)
                row.update(ceiling=c["accuracy"], ceiling_run_id=c["run_id"])
            if "w2s" in cfg.kinds:
                w = self.fit(self.w2s_spec(seed, splits, weak), splits)
                row.update(w2s=w["accuracy"], w2s_run_id=w["run_id"])
            out.append(row)
        return pd.DataFrame(out)

    def _complete(self, spec, d: Path) -> bool:
        """A finished run is reusable when what later runs read from it is there."""
        return not self.keeps_weights(spec) or (d / "weights").exists()
