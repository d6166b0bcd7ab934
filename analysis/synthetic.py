"""Synthetic run stores in the pipeline's format, for tests, benchmarks and trying the analysis
without training anything. Accuracies in metrics.json are computed from the written predictions,
so the two always agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.runs import METRICS_FILE, PREDICTIONS_FILE
from w2s.metrics import auroc


@dataclass(frozen=True)
class ModelPredictions:
    """A model's predicted probabilities per split, for one task and seed."""

    probs: dict[str, np.ndarray]


def simulate_probs(
    labels: np.ndarray, accuracy: float, rng: np.random.Generator, sharp: float = 0.35
) -> np.ndarray:
    """Binary probabilities whose argmax is right on about ``accuracy`` of the examples, with
    correct answers more confident than wrong ones (so confidence is informative)."""
    n = len(labels)
    correct = rng.random(n) < accuracy
    pred = np.where(correct, labels, 1 - labels)
    conf = np.where(correct, 0.5 + rng.uniform(0.05, 0.5, n), 0.5 + rng.uniform(0.0, sharp, n))
    probs = np.empty((n, 2))
    probs[np.arange(n), pred] = conf
    probs[np.arange(n), 1 - pred] = 1 - conf
    return probs


def write_predictions(
    run_dir: Path, labels: dict[str, np.ndarray], probs: dict[str, np.ndarray], weak_soft=None
) -> None:
    """predictions.parquet with one row per example of every split."""
    ids, splits, labs, flat, soft = [], [], [], [], []
    for split in labels:
        n = len(labels[split])
        ids += [f"{split}-{i}" for i in range(n)]
        splits += [split] * n
        labs.append(labels[split])
        flat.append(probs[split])
        s = (weak_soft or {}).get(split)
        soft += [None] * n if s is None else list(map(list, s))
    p = np.concatenate(flat)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "split": pa.array(splits, pa.string()),
            "label": pa.array(np.concatenate(labs), pa.int64()),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(p.ravel()), p.shape[1]).cast(
                pa.list_(pa.float64())
            ),
            "weak_soft": pa.array(soft, pa.list_(pa.float64())),
        }
    )
    pq.write_table(table, run_dir / PREDICTIONS_FILE)


def write_metrics(run_dir: Path, meta: dict) -> None:
    (run_dir / METRICS_FILE).write_text(json.dumps(meta))


def write_run(
    root: Path,
    kind: str,
    run_id: str,
    task: str,
    seed: int,
    labels: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
    weak_model: str | None = None,
    strong_model: str | None = None,
    loss: str = "gt",
    weak_params: float | None = None,
    strong_params: float | None = None,
    weak_run: str | None = None,
    config: dict | None = None,
    weak_soft: dict[str, np.ndarray] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write one finished run (predictions, then metrics, as the pipeline does) and return its dir.

    ``extra``: further metrics.json fields (provenance, partner ids, supervisor accuracy, ...),
    written as given, so tests can build stores with and without them."""
    run_dir = Path(root) / "runs" / kind / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(run_dir, labels, probs, weak_soft)
    test_probs, test_labels = probs["test"], labels["test"]
    n_params = {"weak": weak_params, "ceiling": strong_params, "w2s": strong_params}[kind]
    meta = {
        "run_id": run_id,
        "kind": kind,
        "task": task,
        "weak_model": weak_model,
        "strong_model": strong_model,
        "loss": loss,
        "seed": seed,
        "accuracy": float(np.mean(test_probs.argmax(1) == test_labels)),
        "auroc": auroc(test_probs, test_labels),
        "n_test": int(len(test_labels)),
        "train_seconds": 1.0,
        "examples_per_second": 100.0,
        "status": "done",
        "n_params": n_params,
        "weak_params": weak_params if kind != "ceiling" else None,
        "strong_params": strong_params if kind != "weak" else None,
        "weak_run": weak_run,
        "config": {"train.lr": 1e-4, "train.seed": seed, **(config or {})},
        **(extra or {}),
    }
    write_metrics(run_dir, meta)
    return run_dir


def make_results(
    root: str | Path,
    tasks: tuple[str, ...] = ("sciq",),
    weak_models: dict[str, float] | None = None,
    strong_models: dict[str, float] | None = None,
    losses: tuple[str, ...] = ("xent", "logconf"),
    seeds: tuple[int, ...] = (0, 1, 2),
    n_test: int = 200,
    n_val: int = 100,
    n_b: int = 50,
    seed: int = 0,
    record_ids: bool = False,
) -> Path:
    """A complete results directory: weak, ceiling and w2s runs for every pair with weak < strong.

    ``record_ids`` writes the fields the pipeline records since provenance tracking (code
    version and commit, checkpoints, backbone change, inference seconds per example, the
    partners' run ids, the supervisor's accuracy and its test probabilities); without it the
    store looks like one written before them."""
    weak_models = weak_models or {"gpt2": 124e6}
    strong_models = strong_models or {"gpt2-large": 774e6}
    rng = np.random.default_rng(seed)
    root = Path(root)
    for task in tasks:
        for s in seeds:
            labels = {
                "test": rng.integers(0, 2, n_test),
                "val": rng.integers(0, 2, n_val),
                "b": rng.integers(0, 2, n_b),
            }
            weak_preds, ceiling_preds = {}, {}

            def recorded(name: str, params: float) -> dict:
                if not record_ids:
                    return {}
                return {
                    "code_version": "0.1.0",
                    "git_commit": "0" * 40,
                    "git_dirty": False,
                    "models": {name: {"path": name, "checkpoint": f"sha256:{name}"}},
                    "backbone_change": 0.01,
                    "predict_seconds_per_example": params * 1e-11,  # 1 ms per 100M parameters
                    "selected_step": 100,
                    "n_duplicates_dropped": 0,
                }

            for name, params in weak_models.items():
                acc = 0.55 + 0.1 * np.log10(params / 1e8)
                weak_preds[name] = {k: simulate_probs(v, acc, rng) for k, v in labels.items()}
                write_run(
                    root,
                    "weak",
                    f"{task}-weak-{name}-s{s}",
                    task,
                    s,
                    labels,
                    weak_preds[name],
                    weak_model=name,
                    weak_params=params,
                    extra=recorded(name, params),
                )
            for name, params in strong_models.items():
                acc = 0.6 + 0.12 * np.log10(params / 1e8)
                ceiling_preds[name] = {k: simulate_probs(v, acc, rng) for k, v in labels.items()}
                write_run(
                    root,
                    "ceiling",
                    f"{task}-ceiling-{name}-s{s}",
                    task,
                    s,
                    labels,
                    ceiling_preds[name],
                    strong_model=name,
                    strong_params=params,
                    extra=recorded(name, params),
                )
            for (wname, wparams), (sname, sparams) in (
                (w, st) for w in weak_models.items() for st in strong_models.items() if st[1] > w[1]
            ):
                for li, loss in enumerate(losses):
                    # share of examples on which the student copies the weak model
                    mix = 0.3 + 0.5 * li / max(1, len(losses) - 1)
                    weak_id = f"{task}-weak-{wname}-s{s}"
                    extra = recorded(sname, sparams)
                    if record_ids:
                        acc = float(np.mean(weak_preds[wname]["test"].argmax(1) == labels["test"]))
                        extra.update(
                            weak_runs=[weak_id],
                            ceiling_run=f"{task}-ceiling-{sname}-s{s}",
                            supervisor_accuracy=acc,
                            supervisor_members=[
                                {"model": wname, "run_id": weak_id, "accuracy": acc}
                            ],
                        )
                    soft_splits = ("b", "test") if record_ids else ("b",)
                    probs = {}
                    for k in labels:
                        copy = rng.random(len(labels[k]))[:, None] < mix
                        probs[k] = np.where(copy, weak_preds[wname][k], ceiling_preds[sname][k])
                    write_run(
                        root,
                        "w2s",
                        f"{task}-w2s-{wname}-{sname}-{loss}-s{s}",
                        task,
                        s,
                        labels,
                        probs,
                        weak_model=wname,
                        strong_model=sname,
                        loss=loss,
                        weak_params=wparams,
                        strong_params=sparams,
                        weak_run=weak_id,
                        weak_soft={k: weak_preds[wname][k] for k in soft_splits},
                        extra=extra,
                    )
    return root
