"""weak -> labels -> ceiling -> w2s for one (task, weak, strong, loss) and several seeds.

Each run is content-addressed in the run store: a weak run whose labels several strong runs
need is trained once, and a finished experiment asked for again trains nothing. The weak
model's soft labels are read back from its ``predictions.parquet``, so reuse works across
processes and sweeps exactly as within one.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import nnx
from omegaconf import OmegaConf

from w2s.config import Config, ModelConfig
from w2s.data import load_task, load_tokenizer, make_splits, tokenize
from w2s.distributed import agree, barrier, is_lead
from w2s.metrics import accuracy, auroc
from w2s.models import load_classifier
from w2s.models.hub import resolve
from w2s.models.stack import check_remat
from w2s.store import RunStore, run_id
from w2s.train.batches import fit_buckets
from w2s.train.loop import View, predict, restore_params, save_params, train_group
from w2s.train.losses import get_loss

log = logging.getLogger("w2s")

# Keys that change how a run is shown or stored, never its numbers. A model's or a task's
# ``name`` is only its label (its path or source is what counts); a loss's name is not cosmetic.
COSMETIC = {"progress", "checkpoint_every", "eval_every", "eval_batch_size"}


def _identity(node, *, labelled: bool = False) -> dict:
    """The keys of a config node that can change a run's numbers."""
    d = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    drop = COSMETIC | ({"name"} if labelled else set())
    return {k: v for k, v in d.items() if k not in drop}


def _flat(prefix: str, node) -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}.", v))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = ",".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def loss_name(cfg: Config) -> str:
    loss = cfg.loss
    if loss.supervision == "live":
        name = f"kd_{loss.divergence}_T{loss.temperature:g}"
        if loss.aux != "none" and loss.alpha_max > 0:
            name += f"+{loss.aux}_{loss.alpha_schedule}{loss.alpha_max:g}"
        return name
    name = loss.name
    if loss.name == "logconf" and loss.warmup == "linear":
        name = "logconf_linear"
    if loss.hard_labels:
        name += "_hard"
    if cfg.extra_weak:
        name += f"_ens{1 + len(cfg.extra_weak)}_{cfg.weak_combine}"
    if cfg.filter_q < 1:
        name += f"_q{cfg.filter_q:g}"
    return name


@dataclass
class RunSpec:
    """What one run trains on and how it is identified."""

    kind: str
    rid: str
    header: dict
    identity: dict
    model: ModelConfig
    seed: int
    train_index: np.ndarray
    targets: np.ndarray
    loss_fn: object
    loss_key: object
    predict_splits: list[str]
    weak_soft: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    teacher: tuple | None = None


@dataclass
class Loaded:
    model: nnx.Module
    view: View
    n_params: int


class Experiment:
    """Everything one ``w2s`` command does: data, tokenization, and the runs of each seed."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = RunStore(cfg.results_dir)
        self.cache_dir = Path(str(cfg.cache_dir)).expanduser()
        self.weaks: list[ModelConfig] = [cfg.weak, *cfg.extra_weak]
        self.strong: ModelConfig = cfg.strong
        self._check_sizes()
        check_remat(cfg.train.remat)
        if cfg.train.vmap_seeds > 1 and cfg.task.split_seed is None:
            raise ValueError(
                "train.vmap_seeds > 1 trains seeds side by side on the same rows: set "
                "task.split_seed so that every seed shares its splits"
            )
        self.mesh = self._mesh()
        self.task = load_task(cfg.task, self.cache_dir)
        self.buckets = fit_buckets(list(cfg.train.buckets), cfg.task.max_length)
        self._models: dict[str, Loaded] = {}
        self._tokenized = self._tokenize_all()

    def _check_sizes(self) -> None:
        """Refuse, before any run starts, a batch that cannot be filled from its split."""
        t, bs = self.cfg.task, self.cfg.train.batch_size
        for split, n in (("task.n_a", t.n_a), ("task.n_b", int(round(t.n_b * self.cfg.filter_q)))):
            if bs > n:
                raise ValueError(
                    f"train.batch_size={bs} is larger than the {n} training examples of {split}"
                )

    def _mesh(self):
        """The configured mesh, or None on one device (plain jit, no sharding)."""
        if jax.device_count() == 1:
            return None
        from w2s.models.sharding import make_mesh

        m = self.cfg.mesh
        return make_mesh(data=m.data, fsdp=m.fsdp, tp=m.tp)

    # -- data ---------------------------------------------------------------------------
    def _tokenize_all(self) -> dict[str, View]:
        """Tokenize once per model; drop an example everywhere if any model drops it."""
        views, keep = {}, np.ones(len(self.task.texts), bool)
        for m in {m.name: m for m in [*self.weaks, self.strong]}.values():
            tok = load_tokenizer(resolve(m.path))
            t = tokenize(self.task.texts, tok, self.cfg.task.max_length, self.cfg.task.overlong)
            views[m.name] = View(t.ids, int(tok.pad_token_id))
            keep &= t.keep
        if not keep.all():
            self.task = self.task.subset(
                keep, reason=f"longer than {self.cfg.task.max_length} tokens"
            )
            index = np.flatnonzero(keep)
            views = {k: v.take(index) for k, v in views.items()}
        return views

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        split_seed = self.cfg.task.split_seed
        return make_splits(self.task, self.cfg.task, seed if split_seed is None else split_seed)

    # -- models -------------------------------------------------------------------------
    def pretrained(self, m: ModelConfig) -> Loaded:
        if m.name not in self._models:
            model = load_classifier(
                m.path,
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
            self._models[m.name] = Loaded(model, self._tokenized[m.name], int(n))
        return self._models[m.name]

    # -- runs ---------------------------------------------------------------------------
    def _header(
        self, kind: str, rid: str, seed: int, weak: str | None, strong: str | None, loss: str
    ):
        return {
            "run_id": rid,
            "kind": kind,
            "task": self.cfg.task.name,
            "weak_model": weak,
            "strong_model": strong,
            "loss": loss,
            "seed": seed,
        }

    def _split_identity(self, seed: int) -> dict:
        return {
            "task": _identity(self.cfg.task, labelled=True),
            "split_seed": seed if self.cfg.task.split_seed is None else self.cfg.task.split_seed,
        }

    def _fit_group(self, specs: list[RunSpec], splits: dict[int, dict]) -> list[dict]:
        """Train what is not finished yet (side by side where allowed), record, reuse the rest.

        With several processes, process 0 claims and decides; every process trains the runs
        it decided on, and all wait for its writes before returning (``w2s.distributed``).
        """
        lead = is_lead()
        claim = self.store.claim(*((s.kind, s.rid) for s in specs)) if lead else nullcontext()
        with claim:  # parallel jobs wait here
            finished = [
                None if self.cfg.force or not lead else self.store.finished(s.kind, s.rid)
                for s in specs
            ]
            reuse = agree([f is not None for f in finished])
            out: list[dict | None] = [None] * len(specs)
            todo = []
            for i, spec in enumerate(specs):
                if reuse[i]:
                    log.info("%s run %s already finished: reused", spec.kind, spec.rid)
                    out[i] = finished[i] or self.store.finished(spec.kind, spec.rid)
                    continue
                config = {
                    **spec.identity,
                    "header": spec.header,
                    "train": OmegaConf.to_container(self.cfg.train, resolve=True),
                }
                d = self.store.dir(spec.kind, spec.rid)
                if lead:
                    self.store.start(spec.kind, spec.rid, config, spec.header)
                todo.append((i, spec, d))
            barrier("w2s-runs-started")  # run dirs exist for every process's checkpoints
            for group in self._side_by_side(todo):
                try:
                    trained = self._train(group)
                    for (i, spec, d), (model, result) in zip(group, trained, strict=True):
                        out[i] = self._record(spec, splits[spec.seed], d, model, result, len(group))
                except BaseException as e:
                    for i, spec, d in group:
                        if out[i] is None and lead:
                            self.store.fail(d, spec.header, e)
                    raise
            barrier("w2s-runs-recorded")  # what process 0 wrote is readable by all
            return out

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

    def _train(self, group: list) -> list[tuple[nnx.Module, object]]:
        specs = [spec for _, spec, _ in group]
        first, d = specs[0], group[0][2]
        loaded = self.pretrained(first.model)
        models = [nnx.clone(loaded.model) for _ in specs]
        teachers = None
        if first.teacher is not None:
            teachers = ([s.teacher[0] for s in specs], first.teacher[1], first.teacher[2])
        checkpoints = self.cfg.train.checkpoint_every and len(specs) == 1
        results = train_group(
            models,
            loaded.view.take(first.train_index),
            [s.targets for s in specs],
            self.task.labels[first.train_index],
            self.cfg.train,
            seeds=[s.seed for s in specs],
            loss_fn=first.loss_fn,
            loss_key=first.loss_key,
            lr=first.model.lr or self.cfg.train.lr,
            buckets=self.buckets,
            ckpt_dir=d / "checkpoints" if checkpoints else None,
            teachers=teachers,
            extras=[s.extras for s in specs],
            mesh=self.mesh,
            desc=f"{first.kind} {first.model.name} seed " + ",".join(str(s.seed) for s in specs),
        )
        return list(zip(models, results, strict=True))

    def _record(self, spec: RunSpec, splits, d: Path, model, result, group_size: int) -> dict:
        """Predict, write predictions then metrics (last), keep a weak model's weights."""
        loaded = self.pretrained(spec.model)
        labels = self.task.labels
        probs = {
            split: predict(
                model, loaded.view.take(splits[split]), self.cfg.train.eval_batch_size, self.buckets
            )
            for split in spec.predict_splits
        }
        rows = [
            self._prediction_rows(splits[split], split, p, spec.weak_soft if split == "b" else None)
            for split, p in probs.items()
        ]
        test_labels = labels[splits["test"]]
        metrics = {
            **spec.header,
            "accuracy": accuracy(probs["test"], test_labels),
            "auroc": auroc(probs["test"], test_labels),
            "n_test": int(len(test_labels)),
            "n_train": int(len(spec.train_index)),
            "num_labels": int(self.task.num_labels),
            "train_seconds": result.seconds,
            "compile_seconds": result.compile_seconds,
            "examples_per_second": result.examples_per_second,
            "steps": result.steps,
            "resumed_from": result.resumed_from,
            "trained_side_by_side": group_size,
            "loss_history": [[h["step"], round(h["loss"], 6)] for h in result.history],
            "n_params": loaded.n_params,
            "config": _flat("", _config_for_table(self.cfg)),
        }
        if len(splits["val"]) and "val" in probs:
            metrics["val_accuracy"] = accuracy(probs["val"], labels[splits["val"]])
        if spec.kind == "weak":  # the supervisor's weights, for live distillation later
            save_params(model, d / "weights")  # every process: orbax writes its shards
        if is_lead():
            self.store.finish(d, metrics, pd.concat(rows, ignore_index=True))
        return metrics

    def _prediction_rows(self, idx, split, probs, weak_soft) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": [self.task.ids[i] for i in idx],
                "split": split,
                "label": self.task.labels[idx].astype(np.int64),
                "probs": list(probs.astype(np.float32)),
                "weak_soft": list(weak_soft.astype(np.float32)) if weak_soft is not None else None,
            }
        )

    def _gt_spec(self, kind: str, m: ModelConfig, seed: int, index: np.ndarray) -> RunSpec:
        """weak (on A) and ceiling (on B): cross-entropy to ground truth."""
        identity = {
            "kind": kind,
            "data": self._split_identity(seed),
            "model": _identity(m, labelled=True),
            "train": _identity(self.cfg.train),
            "seed": seed,
        }
        rid = run_id(identity)
        weak, strong = (m.name, None) if kind == "weak" else (None, m.name)
        onehot = np.eye(self.task.num_labels, dtype=np.float32)[self.task.labels[index]]
        return RunSpec(
            kind=kind,
            rid=rid,
            header=self._header(kind, rid, seed, weak, strong, "gt"),
            identity=identity,
            model=m,
            seed=seed,
            train_index=index,
            targets=onehot,
            loss_fn=_gt_loss(),
            loss_key="gt",
            predict_splits=["b", "val", "test"] if kind == "weak" else ["val", "test"],
        )

    def weak_labels(self, weak_runs: list[dict], splits, kind: str = "weak") -> np.ndarray:
        """Soft labels on B from stored predictions (weak runs, or the previous s2s round)."""
        b_ids = [self.task.ids[i] for i in splits["b"]]
        per_model = []
        for w in weak_runs:
            df = self.store.predictions(kind, w["run_id"])
            df = df[df["split"] == "b"].set_index("id")
            per_model.append(np.stack(df.loc[b_ids, "probs"].to_numpy()).astype(np.float32))
        if len(per_model) == 1:
            return per_model[0]
        stacked = np.stack(per_model)  # [M, N, C]
        if self.cfg.weak_combine == "mean":
            return stacked.mean(0)
        if self.cfg.weak_combine == "confidence":
            conf = stacked.max(-1, keepdims=True)
            return (stacked * conf).sum(0) / conf.sum(0)
        raise ValueError(f"weak_combine '{self.cfg.weak_combine}' unknown; use mean or confidence")

    def _teacher(self, weak_run: dict, b_keep: np.ndarray):
        """The trained weak model, frozen, with its own token view of the training rows."""
        m = self.weaks[0]
        teacher = restore_params(
            nnx.clone(self.pretrained(m).model),
            self.store.dir("weak", weak_run["run_id"]) / "weights",
        )
        return teacher, self._tokenized[m.name].take(b_keep), float(self.cfg.loss.temperature)

    def _w2s_spec(
        self,
        seed: int,
        splits,
        weak_runs: list[dict],
        previous: dict | None = None,
        round_: int = 0,
    ) -> RunSpec:
        """Strong model on B supervised by the weak runs (or, for round_ >= 1, by the previous
        strong round: strong-to-strong)."""
        m, cfg = self.strong, self.cfg
        if previous is None:
            soft = self.weak_labels(weak_runs, splits)
        else:
            soft = self.weak_labels([previous], splits, kind="w2s")
        b = splits["b"]
        keep = np.arange(len(b))
        if cfg.filter_q < 1:
            k = max(1, int(round(cfg.filter_q * len(b))))
            keep = np.sort(np.argsort(-soft.max(-1), kind="stable")[:k])
        live = cfg.loss.supervision == "live" and previous is None
        if live and len(weak_runs) > 1:
            raise ValueError(
                "live supervision uses one weak model; extra_weak needs supervision=labels"
            )
        targets = soft[keep]
        extras = {}
        if cfg.loss.aux == "gt":  # a seeded share of B keeps its ground truth (not pure W2S)
            n_gt = int(round(cfg.loss.gt_fraction * len(keep)))
            chosen = np.random.default_rng([seed, 17]).permutation(len(keep))[:n_gt]
            extras["gt_mask"] = np.isin(np.arange(len(keep)), chosen).astype(np.float32)
        identity = {
            "kind": "w2s",
            "data": self._split_identity(seed),
            "model": _identity(m, labelled=True),
            "train": _identity(cfg.train),
            "seed": seed,
            "loss": _identity(cfg.loss),
            "weak_runs": [w["run_id"] for w in weak_runs],
            "weak_combine": cfg.weak_combine,
            "filter_q": cfg.filter_q,
            "previous": previous["run_id"] if previous else None,
        }
        rid = run_id(identity)
        name = loss_name(cfg) + (f"_s2s{round_}" if round_ else "")
        header = self._header("w2s", rid, seed, "+".join(x.name for x in self.weaks), m.name, name)
        header["weak_run"] = weak_runs[0]["run_id"]
        if previous is not None:
            header["previous_run"] = previous["run_id"]
        spec = RunSpec(
            kind="w2s",
            rid=rid,
            header=header,
            identity=identity,
            model=m,
            seed=seed,
            train_index=b[keep],
            targets=targets,
            loss_fn=_adapt(get_loss(cfg.loss)),
            loss_key=("w2s", live, tuple(sorted(_identity(cfg.loss).items()))),
            predict_splits=["b", "val", "test"],
            weak_soft=soft,
            extras=extras,
            teacher=self._teacher(weak_runs[0], b[keep]) if live else None,
        )
        return spec

    def run(self) -> pd.DataFrame:
        """Every seed's weak, ceiling and w2s runs; ``train.vmap_seeds`` seeds at a time."""
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
                    specs = [self._gt_spec("weak", m, s, splits[s]["a"]) for s in chunk]
                    for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                        weak[s].append(run)
                for s in chunk:
                    table[s]["weak"] = weak[s][0]["accuracy"]
            if "ceiling" in self.cfg.kinds:
                specs = [self._gt_spec("ceiling", self.strong, s, splits[s]["b"]) for s in chunk]
                for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                    table[s]["ceiling"] = run["accuracy"]
            if "w2s" in self.cfg.kinds:
                previous = {s: None for s in chunk}
                for r in range(self.cfg.s2s_rounds + 1):
                    specs = [self._w2s_spec(s, splits[s], weak[s], previous[s], r) for s in chunk]
                    for s, run in zip(chunk, self._fit_group(specs, splits), strict=True):
                        table[s]["w2s" if r == 0 else f"s2s{r}"] = run["accuracy"]
                        previous[s] = run
            seconds = (time.perf_counter() - t0) / len(chunk)
            for s in chunk:
                rows.append({**table[s], "seconds": seconds})
                log.info("seed %s: %s", s, {key: round(v, 4) for key, v in rows[-1].items()})
        return pd.DataFrame(rows)


def _config_for_table(cfg: Config) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    return {k: c[k] for k in ("loss", "train") if k in c} | {
        "filter_q": c["filter_q"],
        "weak_combine": c["weak_combine"],
        "s2s_rounds": c["s2s_rounds"],
    }


def _gt_loss():
    """Cross-entropy to one-hot ground truth (weak and ceiling runs)."""
    from w2s.train.losses import xent

    return lambda logits, targets, weight, step_frac, batch: xent(
        logits, targets, weight, step_frac
    )


def _adapt(loss):
    """Loss over a batch; the ground-truth auxiliary reads its rows from the batch."""

    def fn(logits, targets, weight, step_frac, batch):
        if "gt_mask" in batch:
            gt = jax.nn.one_hot(batch["labels"], logits.shape[-1], dtype=jnp.float32)
            return loss(logits, targets, weight, step_frac, gt_targets=gt, gt_mask=batch["gt_mask"])
        return loss(logits, targets, weight, step_frac)

    return fn
