"""Run specs and their identities: what one run trains on, and the hash that names it.

A run's id hashes every config key that can change its numbers and the ids of the rows it
trains and is scored on, so a finished run is found and reused exactly when it would be
recomputed identically. The orchestrator (``w2s.pipeline``) builds specs here and never
hashes anything itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from omegaconf import OmegaConf

from w2s.config import Config, ModelConfig
from w2s.store import run_id

# Keys that change how a run is shown or stored, never its numbers. A model's or a task's
# ``name`` is only its label (its path or source is what counts); a loss's name is not cosmetic.
COSMETIC = {"progress", "checkpoint_every", "eval_batch_size", "keep_checkpoints"}


def identity(node, *, labelled: bool = False) -> dict:
    """The keys of a config node that can change a run's numbers."""
    d = OmegaConf.to_container(node, resolve=True) if not isinstance(node, dict) else dict(node)
    drop = COSMETIC | ({"name"} if labelled else set())
    return {k: v for k, v in d.items() if k not in drop}


def flat(prefix: str, node) -> dict:
    """Nested dicts as one level of dotted keys; lists as comma-joined text."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flat(f"{prefix}{k}.", v))
        elif isinstance(v, list):
            out[f"{prefix}{k}"] = ",".join(map(str, v))
        else:
            out[f"{prefix}{k}"] = v
    return out


def rows_hash(ids: list[str], splits: dict[str, np.ndarray]) -> str:
    """A hash of the example ids in every split, in order: which rows a run saw."""
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(f"{name}:".encode())
        h.update("\x1f".join(ids[i] for i in splits[name]).encode())
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def loss_name(cfg: Config) -> str:
    """The loss as tables name it: the loss, its live/offline variant, and the supervision."""
    loss = cfg.loss
    if loss.supervision == "live":
        name = f"kd_{loss.divergence}_T{loss.temperature:g}"
        if loss.aux != "none" and loss.alpha_max > 0:
            name += f"+{loss.aux}_{loss.alpha_schedule}{loss.alpha_max:g}"
        return name
    name = loss.name
    if loss.name == "kd":
        name = f"kd_{loss.divergence}_T{loss.temperature:g}_cached"
    if loss.name == "logconf" and loss.warmup == "linear":
        name = "logconf_linear"
    if loss.hard_labels:
        name += "_hard"
    if cfg.extra_weak:
        name += f"_ens{1 + len(cfg.extra_weak)}_{cfg.weak_combine}"
    if cfg.filter_q < 1:
        name += f"_q{cfg.filter_q:g}"
    return name


def config_for_table(cfg: Config) -> dict:
    """The sweepable keys a run records (flattened into ``metrics.json``'s ``config``)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    return flat(
        "",
        {k: c[k] for k in ("loss", "train") if k in c}
        | {"filter_q": c["filter_q"], "weak_combine": c["weak_combine"], "s2s_rounds": c["s2s_rounds"]},
    )


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
    loss_cfg: object  # a LossConfig, or None for ground truth
    loss_key: object
    predict_splits: list[str]
    val_targets: np.ndarray | None = None  # what model selection may score val against
    weak_soft: dict[str, np.ndarray] = field(default_factory=dict)  # split -> supervisor probs
    extras: dict = field(default_factory=dict)
    teacher: tuple | None = None
    record: dict = field(default_factory=dict)  # further metrics fields (partners, supervisor)


def header(kind: str, rid: str, cfg: Config, seed: int, weak, strong, loss: str) -> dict:
    return {
        "run_id": rid,
        "kind": kind,
        "task": cfg.task.name,
        "weak_model": weak,
        "strong_model": strong,
        "loss": loss,
        "seed": seed,
    }


def data_identity(cfg: Config, seed: int, rows: str) -> dict:
    """The task config, the split seed and the rows actually drawn (after dedup and drops)."""
    return {
        "task": identity(cfg.task, labelled=True),
        "split_seed": seed if cfg.task.split_seed is None else cfg.task.split_seed,
        "rows": rows,
    }


def early_stops(cfg: Config, kind: str) -> bool:
    """Whether runs of this kind train until their val loss stops falling."""
    return kind in cfg.train.early_stop.runs


def uses_lora(cfg: Config, kind: str) -> bool:
    """Whether runs of this kind train LoRA adapters (weak runs train the weak model)."""
    role = "weak" if kind == "weak" else "strong"
    return cfg.train.lora.rank > 0 and role in cfg.train.lora.models


def train_identity(cfg: Config, kind: str, m: ModelConfig) -> dict:
    """The train keys that can change a run of this kind and model. Early stopping replaces
    epochs, eval_every and select for the kinds it lists, and does not touch the others; the
    low-precision update rule matters only to parameters stored below float32."""
    t = identity(cfg.train)
    if m.param_dtype == "float32":
        t.pop("low_precision_update")
    lora = t.pop("lora")
    if uses_lora(cfg, kind):
        t["lora"] = {k: v for k, v in lora.items() if k != "models"}
    stop = t.pop("early_stop")
    if early_stops(cfg, kind):
        for key in ("epochs", "eval_every", "select"):
            t.pop(key)
        t["early_stop"] = {k: v for k, v in stop.items() if k != "runs"}
    return t


def gt_identity(cfg: Config, kind: str, m: ModelConfig, seed: int, rows: str) -> dict:
    """weak (ground truth of A) and ceiling (ground truth of B) runs."""
    return {
        "kind": kind,
        "data": data_identity(cfg, seed, rows),
        "model": identity(m, labelled=True),
        "train": train_identity(cfg, kind, m),
        "seed": seed,
    }


def gt_run_id(cfg: Config, kind: str, m: ModelConfig, seed: int, rows: str) -> str:
    return run_id(gt_identity(cfg, kind, m, seed, rows))


def w2s_identity(
    cfg: Config, seed: int, rows: str, weak_runs: list[str], previous: str | None
) -> dict:
    return {
        "kind": "w2s",
        "data": data_identity(cfg, seed, rows),
        "model": identity(cfg.strong, labelled=True),
        "train": train_identity(cfg, "w2s", cfg.strong),
        "seed": seed,
        "loss": identity(cfg.loss),
        "weak_runs": weak_runs,
        "weak_combine": cfg.weak_combine,
        "filter_q": cfg.filter_q,
        "previous": previous,
    }
