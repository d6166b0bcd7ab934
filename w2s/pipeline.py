"""weak -> labels -> ceiling -> w2s for one (task, weak, strong, loss) and several seeds.

Each run is content-addressed in the run store: a weak run whose labels several strong runs
need is trained once, and a finished experiment asked for again trains nothing. The weak
model's soft labels are read back from its ``predictions.parquet``, so reuse works across
processes and sweeps exactly as within one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from flax import nnx
from omegaconf import OmegaConf

from w2s.config import Config, ModelConfig
from w2s.data import load_task, load_tokenizer, make_splits, tokenize
from w2s.metrics import accuracy, auroc
from w2s.models import load_classifier
from w2s.models.hub import resolve
from w2s.store import RunStore, run_id
from w2s.train.batches import fit_buckets
from w2s.train.loop import View, predict, train
from w2s.train.losses import get_loss

log = logging.getLogger("w2s")

# Keys that change how a run is shown or stored, never its numbers.
COSMETIC = {"progress", "checkpoint_every", "eval_every", "eval_batch_size", "name"}


def _identity(node) -> dict:
    d = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    return {k: v for k, v in d.items() if k not in COSMETIC}


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
        self.task = load_task(cfg.task, self.cache_dir)
        self.buckets = fit_buckets(list(cfg.train.buckets), cfg.task.max_length)
        self._models: dict[str, Loaded] = {}
        self._tokenized = self._tokenize_all()

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
            self.task = self.task.subset(keep, reason=f"longer than {self.cfg.task.max_length} tokens")
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
            )
            n = sum(x.size for x in jax.tree.leaves(nnx.state(model.backbone, nnx.Param)))
            self._models[m.name] = Loaded(model, self._tokenized[m.name], int(n))
        return self._models[m.name]

    # -- runs ---------------------------------------------------------------------------
    def _header(self, kind: str, rid: str, seed: int, weak: str | None, strong: str | None, loss: str):
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
            "task": _identity(self.cfg.task),
            "split_seed": seed if self.cfg.task.split_seed is None else self.cfg.task.split_seed,
        }

    def _fit(self, kind, rid, header, model_cfg, seed, train_index, targets, loss_fn, loss_key,
             extra_identity, predict_splits, splits, weak_soft=None):
        """Shared body of every run: train, predict, write; reuse when already finished."""
        done = None if self.cfg.force else self.store.finished(kind, rid)
        if done is not None:
            log.info("%s run %s already finished: reused", kind, rid)
            return done
        config = {
            **extra_identity,
            "header": header,
            "train": OmegaConf.to_container(self.cfg.train, resolve=True),
        }
        d = self.store.start(kind, rid, config, header)
        try:
            loaded = self.pretrained(model_cfg)
            model = nnx.clone(loaded.model)
            labels = self.task.labels
            result = train(
                model,
                loaded.view.take(train_index),
                targets,
                labels[train_index],
                self.cfg.train,
                loss_fn=loss_fn,
                loss_key=loss_key,
                lr=model_cfg.lr or self.cfg.train.lr,
                seed=seed,
                buckets=self.buckets,
                ckpt_dir=d / "checkpoints" if self.cfg.train.checkpoint_every else None,
                desc=f"{kind} {model_cfg.name} seed {seed}",
            )
            rows, probs_test = [], None
            for split in predict_splits:
                idx = splits[split]
                probs = predict(model, loaded.view.take(idx), self.cfg.train.eval_batch_size, self.buckets)
                if split == "test":
                    probs_test = probs
                soft = weak_soft if (split == "b" and weak_soft is not None) else None
                rows.append(self._prediction_rows(idx, split, probs, soft))
            test_labels = labels[splits["test"]]
            metrics = {
                **header,
                "accuracy": accuracy(probs_test, test_labels),
                "auroc": auroc(probs_test, test_labels),
                "n_test": int(len(test_labels)),
                "n_train": int(len(train_index)),
                "num_labels": int(self.task.num_labels),
                "train_seconds": result.seconds,
                "compile_seconds": result.compile_seconds,
                "examples_per_second": result.examples_per_second,
                "steps": result.steps,
                "resumed_from": result.resumed_from,
                "n_params": loaded.n_params,
                "config": _flat("", _config_for_table(self.cfg)),
            }
            if "val" in predict_splits and len(splits["val"]):
                val_probs = rows[predict_splits.index("val")]["probs"]
                metrics["val_accuracy"] = accuracy(np.stack(val_probs), labels[splits["val"]])
            self.store.finish(d, metrics, pd.concat(rows, ignore_index=True))
            return metrics
        except BaseException as e:
            self.store.fail(d, header, e)
            raise

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

    def run_weak(self, m: ModelConfig, seed: int, splits) -> dict:
        identity = {"kind": "weak", "data": self._split_identity(seed), "model": _identity(m),
                    "train": _identity(self.cfg.train), "seed": seed}
        rid = run_id(identity)
        header = self._header("weak", rid, seed, m.name, None, "gt")
        a = splits["a"]
        onehot = np.eye(self.task.num_labels, dtype=np.float32)[self.task.labels[a]]
        metrics = self._fit("weak", rid, header, m, seed, a, onehot, _gt_loss(), "gt", identity,
                            ["b", "val", "test"], splits)
        return metrics

    def run_ceiling(self, seed: int, splits) -> dict:
        m = self.strong
        identity = {"kind": "ceiling", "data": self._split_identity(seed), "model": _identity(m),
                    "train": _identity(self.cfg.train), "seed": seed}
        rid = run_id(identity)
        header = self._header("ceiling", rid, seed, None, m.name, "gt")
        b = splits["b"]
        onehot = np.eye(self.task.num_labels, dtype=np.float32)[self.task.labels[b]]
        return self._fit("ceiling", rid, header, m, seed, b, onehot, _gt_loss(), "gt", identity,
                         ["val", "test"], splits)

    def weak_labels(self, weak_runs: list[dict], splits) -> np.ndarray:
        """Soft labels on B from the weak runs' stored predictions, merged if several."""
        b_ids = [self.task.ids[i] for i in splits["b"]]
        per_model = []
        for w in weak_runs:
            df = self.store.predictions("weak", w["run_id"])
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

    def run_w2s(self, seed: int, splits, weak_runs: list[dict]) -> dict:
        m, cfg = self.strong, self.cfg
        soft = self.weak_labels(weak_runs, splits)
        b = splits["b"]
        keep = np.arange(len(b))
        if cfg.filter_q < 1:
            k = max(1, int(round(cfg.filter_q * len(b))))
            keep = np.sort(np.argsort(-soft.max(-1), kind="stable")[:k])
        targets = soft[keep]
        if cfg.loss.hard_labels:
            targets = np.eye(soft.shape[1], dtype=np.float32)[targets.argmax(-1)]
        identity = {"kind": "w2s", "data": self._split_identity(seed), "model": _identity(m),
                    "train": _identity(cfg.train), "seed": seed, "loss": _identity(cfg.loss),
                    "weak_runs": [w["run_id"] for w in weak_runs], "weak_combine": cfg.weak_combine,
                    "filter_q": cfg.filter_q}
        rid = run_id(identity)
        name = loss_name(cfg)
        header = self._header("w2s", rid, seed, "+".join(x.name for x in self.weaks), m.name, name)
        header["weak_run"] = weak_runs[0]["run_id"]
        loss_fn = _adapt(get_loss(cfg.loss))
        key = ("w2s", tuple(sorted(_identity(cfg.loss).items())))
        return self._fit("w2s", rid, header, m, seed, b[keep], targets, loss_fn, key, identity,
                         ["b", "val", "test"], splits, weak_soft=soft)

    def run(self) -> pd.DataFrame:
        rows = []
        for seed in self.cfg.seeds:
            t0 = time.perf_counter()
            splits = self.splits(seed)
            row = {"seed": seed}
            weak_runs = []
            if {"weak", "w2s"} & set(self.cfg.kinds):
                weak_runs = [self.run_weak(w, seed, splits) for w in self.weaks]
                row["weak"] = weak_runs[0]["accuracy"]
            if "ceiling" in self.cfg.kinds:
                row["ceiling"] = self.run_ceiling(seed, splits)["accuracy"]
            if "w2s" in self.cfg.kinds:
                row["w2s"] = self.run_w2s(seed, splits, weak_runs)["accuracy"]
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log.info("seed %s: %s", seed, {k: round(v, 4) for k, v in row.items()})
        return pd.DataFrame(rows)


def _config_for_table(cfg: Config) -> dict:
    c = OmegaConf.to_container(cfg, resolve=True)
    return {k: c[k] for k in ("loss", "train") if k in c} | {
        "filter_q": c["filter_q"], "weak_combine": c["weak_combine"], "s2s_rounds": c["s2s_rounds"]}


def _gt_loss():
    """Cross-entropy to one-hot ground truth (weak and ceiling runs)."""
    from w2s.train.losses import xent

    return lambda logits, targets, weight, step_frac, batch: xent(logits, targets, weight, step_frac)


def _adapt(loss):
    return lambda logits, targets, weight, step_frac, batch: loss(logits, targets, weight, step_frac)
