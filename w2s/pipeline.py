"""weak -> labels -> ceiling -> w2s for one (task, weak, strong, loss) and several seeds.

The orchestrator only orchestrates: run specs and their ids come from ``w2s.runs``, what a w2s
run learns from from ``w2s.supervision``, the run's record from ``w2s.record``, the loss from
``w2s.train.losses.step_loss``. Each run is content-addressed in the run store: a weak run whose
labels several strong runs need is trained once, and a finished experiment asked for again
trains nothing. Weak labels are read back from the weak run's ``predictions.parquet``, so reuse
works across processes and sweeps exactly as within one.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from flax import nnx
from omegaconf import OmegaConf

from w2s import record, runs, supervision, tracking
from w2s.checks import check_config
from w2s.config import Config, ModelConfig
from w2s.console import Console
from w2s.data import load_task, make_splits
from w2s.data.views import token_views
from w2s.distributed import agree, barrier, is_lead
from w2s.metrics import soft_cross_entropy
from w2s.models import load_classifier, lora
from w2s.models.hub import resolve
from w2s.models.loading import build_config
from w2s.runs import RunSpec
from w2s.store import RunStore, run_id
from w2s.timing import timed
from w2s.train.batches import fit_buckets
from w2s.train.loop import (
    Stop,
    View,
    predict,
    predict_state,
    restore_params,
    train_group,
)
from w2s.train.losses import step_loss

log = logging.getLogger("w2s")


@dataclass
class Loaded:
    model: nnx.Module
    view: View
    n_params: int
    family: object = None  # w2s.models.registry.Family (its LoRA targets)


class Experiment:
    """Everything one ``w2s`` command does: data, tokenization, and the runs of each seed."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = RunStore(cfg.results_dir)
        self.cache_dir = Path(str(cfg.cache_dir)).expanduser()
        self.weaks: list[ModelConfig] = [cfg.weak, *cfg.extra_weak]
        self.strong: ModelConfig = cfg.strong
        check_config(cfg, jax.default_backend())  # before anything loads or trains
        self.mesh = self._mesh()
        self.buckets = fit_buckets(list(cfg.train.buckets), cfg.task.max_length)
        self.paths = {m.name: str(resolve(m.path)) for m in [*self.weaks, self.strong]}
        self.task, self.views = token_views(
            load_task(cfg.task, self.cache_dir), self.paths, cfg.task.max_length, cfg.task.overlong
        )
        self._models: dict[str, Loaded] = {}
        self._trackers: dict[tuple[str, str], tracking.Tracker] = {}  # open until recorded
        self.console = Console(cfg)  # one line per run: trained or reused

    def _mesh(self):
        """The configured mesh, or None on one device (plain jit, no sharding)."""
        if jax.device_count() == 1:
            return None
        from w2s.models.sharding import make_mesh

        m = self.cfg.mesh
        return make_mesh(data=m.data, fsdp=m.fsdp, tp=m.tp)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        split_seed = self.cfg.task.split_seed
        return make_splits(self.task, self.cfg.task, seed if split_seed is None else split_seed)

    def ids(self, index: np.ndarray) -> list[str]:
        return [self.task.ids[i] for i in index]

    def pretrained(self, m: ModelConfig) -> Loaded:
        if m.name not in self._models:
            model = load_classifier(
                self.paths[m.name],
                self.task.num_labels,
                pooling=m.pooling,
                dtype=m.param_dtype,
                compute_dtype=m.compute_dtype,
                overrides=dict(m.overrides),
                attention=self.cfg.train.attention,
                remat=self.cfg.train.remat,
                scan_layers=self.cfg.train.scan_layers,
                mesh=self.mesh,
            )
            n = sum(x.size for x in jax.tree.leaves(nnx.state(model.backbone, nnx.Param)))
            family = build_config(self.paths[m.name], dict(m.overrides))[1]
            self._models[m.name] = Loaded(model, self.views[m.name], int(n), family)
        return self._models[m.name]

    # -- specs ---------------------------------------------------------------------------
    def gt_spec(self, kind: str, m: ModelConfig, seed: int, splits) -> RunSpec:
        """weak (on A) and ceiling (on B): cross-entropy to ground truth; val by ground truth."""
        rows = runs.rows_hash(self.task.ids, splits)
        identity = runs.gt_identity(self.cfg, kind, m, seed, rows)
        rid = run_id(identity)
        index = splits["a"] if kind == "weak" else splits["b"]
        eye = np.eye(self.task.num_labels, dtype=np.float32)
        weak, strong = (m.name, None) if kind == "weak" else (None, m.name)
        return RunSpec(
            kind=kind,
            rid=rid,
            header=runs.header(kind, rid, self.cfg, seed, weak, strong, "gt"),
            identity=identity,
            model=m,
            seed=seed,
            train_index=index,
            targets=eye[self.task.labels[index]],
            loss_cfg=None,
            loss_key="gt",
            predict_splits=["b", "val", "test"] if kind == "weak" else ["val", "test"],
            val_targets=eye[self.task.labels[splits["val"]]],
        )

    def w2s_spec(self, seed: int, splits, weak_runs: list[dict], previous=None, round_=0):
        """Strong model on B supervised by the weak runs (or, for round_ >= 1, by the previous
        strong round: strong-to-strong). PGR is always scored against the weak supervision."""
        cfg = self.cfg
        ids = {s: self.ids(splits[s]) for s in ("b", "val", "test")}
        test_labels = self.task.labels[splits["test"]]
        weak = supervision.read_supervision(
            self.store, weak_runs, ids, test_labels, cfg.weak_combine
        )
        trains_on = weak
        if previous is not None:
            trains_on = supervision.read_supervision(
                self.store, [previous], ids, test_labels, kind="w2s"
            )
        soft = trains_on.probs["b"]
        keep = supervision.confident_rows(soft, cfg.filter_q)
        live = cfg.loss.supervision == "live" and previous is None
        targets, val_targets = soft[keep], trains_on.probs["val"]
        if not live and supervision.uses_temperature(cfg.loss):
            targets = supervision.temper(targets, cfg.loss.temperature)
        extras = {}
        if cfg.loss.aux == "gt":
            extras["gt_mask"] = supervision.gt_mask(seed, len(keep), cfg.loss.gt_fraction)
        rows = runs.rows_hash(self.task.ids, splits)
        weak_ids = [w["run_id"] for w in weak_runs]
        identity = runs.w2s_identity(
            cfg, seed, rows, weak_ids, previous["run_id"] if previous else None
        )
        rid = run_id(identity)
        name = runs.loss_name(cfg) + (f"_s2s{round_}" if round_ else "")
        weak_names = "+".join(x.name for x in self.weaks)
        extra_record = {
            "weak_run": weak_ids[0],
            "weak_runs": weak_ids,
            "ceiling_run": runs.gt_run_id(cfg, "ceiling", self.strong, seed, rows),
            "supervisor_accuracy": weak.accuracy,
            "supervisor_members": weak.members,
        }
        if previous is not None:
            extra_record["previous_run"] = previous["run_id"]
        return RunSpec(
            kind="w2s",
            rid=rid,
            header=runs.header("w2s", rid, cfg, seed, weak_names, self.strong.name, name),
            identity=identity,
            model=self.strong,
            seed=seed,
            train_index=splits["b"][keep],
            targets=targets,
            loss_cfg=cfg.loss,
            loss_key=("w2s", live, tuple(sorted(runs.identity(cfg.loss).items()))),
            predict_splits=["b", "val", "test"],
            val_targets=val_targets,
            weak_soft={"b": soft, "test": weak.probs["test"]},
            extras=extras,
            teacher=self._teacher(weak_runs[0], splits["b"][keep]) if live else None,
            record=extra_record,
        )

    def _teacher(self, weak_run: dict, rows: np.ndarray):
        """The trained weak model, frozen, with its own token view of the training rows."""
        m = self.weaks[0]
        teacher = restore_params(
            nnx.clone(self.pretrained(m).model),
            self.store.dir("weak", weak_run["run_id"]) / "weights",
        )
        return teacher, self.views[m.name].take(rows), float(self.cfg.loss.temperature)

    # -- training and recording ------------------------------------------------------------
    def _fit_group(self, specs: list[RunSpec], splits: dict[int, dict]) -> list[dict]:
        """Train what is not finished yet (side by side where allowed), record, reuse the rest.

        With several processes, process 0 claims and decides; every process trains the runs
        it decided on, and all wait for its writes before returning (``w2s.distributed``).
        ``force=true`` retrains from the pretrained weights: old checkpoints are removed first.
        """
        lead = is_lead()
        claim = self.store.claim(*((s.kind, s.rid) for s in specs)) if lead else nullcontext()
        with claim:  # parallel jobs wait here
            finished = [
                None if self.cfg.force or not lead else self._reusable(s) for s in specs
            ]
            reuse = agree([f is not None for f in finished])
            out: list[dict | None] = [None] * len(specs)
            todo = []
            for i, spec in enumerate(specs):
                if reuse[i]:
                    log.info("%s run %s already finished: reused", spec.kind, spec.rid)
                    out[i] = finished[i] or self.store.finished(spec.kind, spec.rid)
                    self.console.reused(out[i])
                    continue
                config = {
                    **spec.identity,
                    "header": spec.header,
                    "train": OmegaConf.to_container(self.cfg.train, resolve=True),
                }
                d = self.store.dir(spec.kind, spec.rid)
                if lead:
                    if self.cfg.force:
                        self.store.clear_weights(spec.kind, spec.rid)
                    self.store.start(spec.kind, spec.rid, config, spec.header)
                todo.append((i, spec, d))
            barrier("w2s-runs-started")  # run dirs exist for every process's checkpoints
            for group in self._side_by_side(todo):
                try:
                    trained = self._train(group)
                    for (i, spec, d), (model, result) in zip(group, trained, strict=True):
                        out[i] = self._record(spec, splits[spec.seed], d, model, result, len(group))
                        self.console.finished(out[i])
                except BaseException as e:
                    for i, spec, d in group:
                        if out[i] is None and lead:
                            self.store.fail(d, spec.header, e)
                    self._close_trackers([spec for _, spec, _ in group])  # marked failed
                    raise
            barrier("w2s-runs-recorded")  # what process 0 wrote is readable by all
            return out

    def _keeps_weights(self, kind: str) -> bool:
        return kind == "weak" or kind in self.cfg.save_weights

    def _reusable(self, spec: RunSpec) -> dict | None:
        """The finished run's metrics, unless weights it must keep are missing (trained before
        save_weights listed its kind): then it is trained again, to the same numbers."""
        done = self.store.finished(spec.kind, spec.rid)
        weights = self.store.dir(spec.kind, spec.rid) / "weights"
        if done is not None and self._keeps_weights(spec.kind) and not weights.exists():
            log.warning(
                "%s run %s is finished but its weights were not kept; save_weights lists %s, "
                "so it is trained again", spec.kind, spec.rid, spec.kind,
            )
            return None
        return done

    def _side_by_side(self, todo: list) -> list[list]:
        """Groups of up to train.vmap_seeds runs on the same rows; one program trains a group."""
        k = max(1, self.cfg.train.vmap_seeds)
        groups: list[list] = []
        for item in todo:
            last = groups[-1] if groups else None
            if (
                last
                and len(last) < k
                and np.array_equal(last[0][1].train_index, item[1].train_index)
                and (last[0][1].teacher is None) == (item[1].teacher is None)
            ):
                last.append(item)
            else:
                groups.append([item])
        return groups

    def _stop(self, kind: str) -> Stop | None:
        if not runs.early_stops(self.cfg, kind):
            return None
        e = self.cfg.train.early_stop
        return Stop(e.patience, e.max_epochs, e.min_delta, e.every)

    def _evaluator(self, specs: list[RunSpec], val_index: np.ndarray, view: View):
        """Model selection on val, against what each run may see there (ground truth for weak
        and ceiling runs, the supervisor's labels for w2s runs): accuracy and cross-entropy."""
        if not (self.cfg.train.eval_every or runs.early_stops(self.cfg, specs[0].kind)):
            return None
        val_view = view.take(val_index)
        wanted = [s.val_targets for s in specs]

        def evaluate(graphdef, states):
            out = []
            for st, t in zip(states, wanted, strict=True):
                p = predict_state(
                    graphdef, st, val_view, self.cfg.train.eval_batch_size, self.buckets
                )
                out.append({
                    "accuracy": float(np.mean(p.argmax(-1) == t.argmax(-1))),
                    "loss": soft_cross_entropy(p, t),
                })
            return out

        return evaluate

    def _train(self, group: list) -> list[tuple[nnx.Module, object]]:
        specs = [spec for _, spec, _ in group]
        first, d = specs[0], group[0][2]
        loaded = self.pretrained(first.model)
        models = [nnx.clone(loaded.model) for _ in specs]
        if runs.uses_lora(self.cfg, first.kind):
            lo = self.cfg.train.lora
            for model, spec in zip(models, specs, strict=True):
                lora.add(model.backbone, loaded.family, rank=lo.rank, alpha=lo.alpha,
                         groups=list(lo.targets), seed=spec.seed, dropout=lo.dropout)
        teachers = None
        if first.teacher is not None:
            teachers = ([s.teacher[0] for s in specs], first.teacher[1], first.teacher[2])
        checkpoints = self.cfg.train.checkpoint_every and len(specs) == 1
        val_index = self.splits(first.seed)["val"]
        trackers = [tracking.make_trackers(self.cfg, s) for s in specs]  # one run each
        for s, t in zip(specs, trackers, strict=True):
            if t is not None:
                self._trackers[(s.kind, s.rid)] = t
        results = train_group(
            models,
            loaded.view.take(first.train_index),
            [s.targets for s in specs],
            self.task.labels[first.train_index],
            self.cfg.train,
            seeds=[s.seed for s in specs],
            loss_fn=step_loss(first.loss_cfg),
            loss_key=first.loss_key,
            lr=self.cfg.train.lr if first.model.lr is None else first.model.lr,
            buckets=self.buckets,
            ckpt_dir=d / "checkpoints" if checkpoints else None,
            teachers=teachers,
            extras=[s.extras for s in specs],
            mesh=self.mesh,
            desc=f"{first.kind} {first.model.name} seed " + ",".join(str(s.seed) for s in specs),
            evaluate=self._evaluator(specs, val_index, loaded.view),
            select=self.cfg.train.select,
            stop=self._stop(first.kind),
            resume=not self.cfg.force,
            trackers=trackers if any(t is not None for t in trackers) else None,
        )
        if runs.uses_lora(self.cfg, first.kind):  # what is predicted and kept: merged weights
            models = [lora.merge(m) for m in models]
        return list(zip(models, results, strict=True))

    def _record(self, spec: RunSpec, splits, d: Path, model, result, group_size: int) -> dict:
        """Predict, write predictions then metrics (last); keep only what later runs need."""
        loaded = self.pretrained(spec.model)
        probs, timing = {}, {}
        for split in spec.predict_splits:
            with timed() as timing[split]:
                probs[split] = predict(
                    model, loaded.view.take(splits[split]), self.cfg.train.eval_batch_size,
                    self.buckets,
                )
        metrics = record.run_metrics(
            spec, self.cfg, self.task, splits, probs, result, group_size,
            n_params=loaded.n_params,
            backbone_change=record.backbone_change(loaded.model, model),
            models={m.name: self.paths[m.name] for m in self._models_of(spec)},
        )
        t = timing["test"]  # inference cost for cascades: compiling left out
        metrics["predict_seconds_per_example"] = (t["seconds"] - t["compile"]) / len(splits["test"])
        if self._keeps_weights(spec.kind):  # live distillation, w2s-cascade
            record.save_weights(model, d / "weights")  # every process: orbax writes its shards
        if is_lead():
            rows = record.prediction_rows(self.task, splits, probs, spec.weak_soft)
            self.store.finish(d, metrics, rows)
            if not self.cfg.train.keep_checkpoints:
                self.store.clear_checkpoints(spec.kind, spec.rid)
        tracker = self._trackers.pop((spec.kind, spec.rid), None)
        if tracker is not None:  # after the record: tracking never holds up a result
            tracker.finish(metrics, {
                "run": spec.header,
                "identity": spec.identity,
                "experiment": OmegaConf.to_container(self.cfg, resolve=True),
            })
            tracker.close()
        return metrics

    def _close_trackers(self, specs: list[RunSpec]) -> None:
        """Close the trackers of runs that failed before their record (marked failed there)."""
        for s in specs:
            tracker = self._trackers.pop((s.kind, s.rid), None)
            if tracker is not None:
                tracker.close()

    def _models_of(self, spec: RunSpec) -> list[ModelConfig]:
        return [spec.model] if spec.kind != "w2s" else [*self.weaks, self.strong]

    # -- the experiment --------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        """Every seed's weak, ceiling and w2s runs; ``train.vmap_seeds`` seeds at a time.

        One row per seed: the test accuracies (``weak`` is the supervision trained on, the
        combined one with several weak models) and the ids of the runs behind them.
        """
        k = max(1, self.cfg.train.vmap_seeds)
        seeds = list(self.cfg.seeds)
        rows = []
        for chunk in (seeds[i : i + k] for i in range(0, len(seeds), k)):
            t0 = time.perf_counter()
            splits = {s: self.splits(s) for s in chunk}
            table = {s: {"seed": s} for s in chunk}
            weak = {s: [] for s in chunk}
            if {"weak", "w2s"} & set(self.cfg.kinds):
                for m in self.weaks:
                    specs = [self.gt_spec("weak", m, s, splits[s]) for s in chunk]
                    for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                        weak[s].append(run)
                for s in chunk:
                    table[s]["weak"] = weak[s][0]["accuracy"]
                    table[s]["weak_run_id"] = weak[s][0]["run_id"]
            if "ceiling" in self.cfg.kinds:
                specs = [self.gt_spec("ceiling", self.strong, s, splits[s]) for s in chunk]
                for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                    table[s]["ceiling"] = run["accuracy"]
                    table[s]["ceiling_run_id"] = run["run_id"]
            if "w2s" in self.cfg.kinds:
                previous = {s: None for s in chunk}
                for r in range(self.cfg.s2s_rounds + 1):
                    specs = [self.w2s_spec(s, splits[s], weak[s], previous[s], r) for s in chunk]
                    for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                        col = "w2s" if r == 0 else f"s2s{r}"
                        table[s][col] = run["accuracy"]
                        table[s][f"{col}_run_id"] = run["run_id"]
                        if r == 0:  # the supervision trained on (combined supervisors)
                            table[s]["weak"] = run.get("supervisor_accuracy", table[s]["weak"])
                        previous[s] = run
            seconds = (time.perf_counter() - t0) / len(chunk)
            for s in chunk:
                rows.append({**table[s], "seconds": seconds})
                log.info("seed %s: %s", s, {
                    key: round(v, 4) for key, v in rows[-1].items() if isinstance(v, float)
                })
        return pd.DataFrame(rows)
