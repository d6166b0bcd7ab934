"""The run-store protocol shared by the LM and preference orchestrators: one run is claimed,
reused when finished (with the artifacts later runs read from it), or trained and recorded;
a failed run is marked failed with its reason, never left looking finished."""

from __future__ import annotations

from pathlib import Path

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

    def _complete(self, spec, d: Path) -> bool:
        """A finished run is reusable when what later runs read from it is there."""
        return not self.keeps_weights(spec) or (d / "weights").exists()
