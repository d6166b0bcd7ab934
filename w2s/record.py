"""What a finished run writes: its ``metrics.json`` fields and ``predictions.parquet`` rows.

Besides the contract fields (DESIGN §2) a run records where its numbers came from (code and
checkpoints), how far its backbone moved, its model-selection curve, its measured inference
cost, the rows it saw (and what deduplication removed), and, for w2s runs, the runs it was
supervised by and compared with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from w2s import diagnostics, provenance
from w2s.metrics import accuracy, auroc
from w2s.runs import RunSpec, config_for_table, early_stops, rows_hash
from w2s.train.loop import save_params as save_weights  # noqa: F401  (re-exported)

backbone_change = provenance.backbone_change


def run_metrics(
    spec: RunSpec,
    cfg,
    task,
    splits: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
    result,
    group_size: int,
    *,
    n_params: int,
    backbone_change: float,
    models: dict[str, str],
) -> dict:
    labels = task.labels
    test_labels = labels[splits["test"]]
    stopped_early = early_stops(cfg, spec.kind)
    metrics = {
        **spec.header,
        **spec.record,
        "accuracy": accuracy(probs["test"], test_labels),
        "auroc": auroc(probs["test"], test_labels),
        "n_test": int(len(test_labels)),
        "n_train": int(len(spec.train_index)),
        "num_labels": int(task.num_labels),
        "train_seconds": result.seconds,
        "compile_seconds": result.compile_seconds,
        "examples_per_second": result.examples_per_second,
        "steps": result.steps,
        "optimizer_steps": result.steps // max(cfg.train.grad_accum, 1),
        "resumed_from": result.resumed_from,
        "trained_side_by_side": group_size,
        "loss_history": [[h["step"], round(h["loss"], 6)] for h in result.history],
        "select": "best_val_loss" if stopped_early else cfg.train.select,
        "eval_curve": result.eval_curve,
        "val_loss_curve": result.val_loss_curve,
        "selected_step": result.selected_step,
        "max_steps": result.max_steps,
        "early_stop": stopped_early,
        "stopped_at": result.stopped_at,
        "backbone_change": backbone_change,
        "n_params": n_params,
        **provenance.code(),
        "models": {
            name: {"path": path, "checkpoint": provenance.checkpoint(path)}
            for name, path in models.items()
        },
        "rows": rows_hash(task.ids, splits),
        "n_duplicates_dropped": int(task.n_duplicates),
        "n_label_conflicts": int(task.n_label_conflicts),
        "dropped": {str(k): int(v) for k, v in task.dropped.items()},
        "config": config_for_table(cfg),
    }
    metrics.update(
        diagnostics.diagnose(
            result.history, probs, test_labels, task.num_labels, spec.weak_soft.get("b"),
            val_loss_curve=result.val_loss_curve if stopped_early else None,
        )
    )
    if len(splits["val"]) and "val" in probs:
        metrics["val_accuracy"] = accuracy(probs["val"], labels[splits["val"]])
    return metrics


def prediction_rows(
    task, splits: dict[str, np.ndarray], probs: dict[str, np.ndarray], weak_soft: dict
) -> pd.DataFrame:
    """One row per (split, example): ground truth, the run's probabilities and, for w2s runs,
    the supervisor's probabilities (``weak_soft``: on B what it trained on, on test the
    supervisor that PGR is measured against)."""
    frames = []
    for split, p in probs.items():
        idx = splits[split]
        soft = weak_soft.get(split)
        frames.append(
            pd.DataFrame(
                {
                    "id": [task.ids[i] for i in idx],
                    "split": split,
                    "label": task.labels[idx].astype(np.int64),
                    "probs": list(p.astype(np.float32)),
                    "weak_soft": list(soft.astype(np.float32)) if soft is not None else None,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
