"""``w2s-cascade``: answer new inputs with a finished experiment's weak model, and send to its
strong model only the inputs whose weak confidence is below the threshold chosen on val for a
cost budget.

The pair (a weak run and the ceiling run of the same task and seed), the costs, the budget and
the threshold are exactly those of ``w2s-analyze``'s cascade budget rows
(:func:`analysis.cascade_runs.run_cascades`), so on the experiment's own test texts the answers
reproduce that row's accuracy and share of strong calls. Both runs need their trained weights:
run the experiment with ``save_weights=[weak,ceiling]`` (weak weights are always kept).

Each model answers its share in batches (length buckets, one compilation per shape); the
measured examples/s of the cascade is reported against weak-only and strong-only passes over the
same inputs, compile time left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.cascade_runs import Budget, budgets_from_args, run_cascades
from analysis.pgr import pair_runs
from analysis.predictions import PredictionStore
from analysis.runs import load_runs, resolve_group_keys

SPLITS = ("test", "val", "b")


@dataclass
class Served:
    """One model rebuilt from its run dir: weights, tokenizer settings and label names."""

    name: str
    model: object
    tokenizer: object
    max_length: int
    buckets: list[int]
    batch_size: int
    classes: list[str]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2s-cascade",
        description="Serve a weak->strong cascade from a finished experiment: the weak model "
        "answers, the strong model gets the inputs below the val-chosen threshold for a budget.",
    )
    p.add_argument("results_dir", help="the experiment's results directory (w2s results_dir)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inputs", help="a .jsonl, .csv or .parquet file of texts to answer")
    src.add_argument(
        "--split", choices=SPLITS, help="answer the pair's own split of the task (e.g. test)"
    )
    p.add_argument(
        "--cache-dir", default=os.environ.get("W2S_CACHE") or "~/.cache/w2s",
        help="where w2s-fetch put BIG-bench (for --split; default $W2S_CACHE or ~/.cache/w2s)",
    )
    p.add_argument("--text-column", default="text")
    p.add_argument(
        "--label-column", default="label",
        help="gold labels (class index or name), optional: scores the answers when present",
    )
    p.add_argument("--task", help="task name, when the results hold several")
    p.add_argument("--weak-model", help="weak model name, when the results hold several")
    p.add_argument("--strong-model", help="strong model name, when the results hold several")
    p.add_argument("--seed", type=int, help="which seed's pair (default: the only one)")
    p.add_argument(
        "--budget-share", type=float, default=None,
        help="budget per example c_weak + F*c_strong (default F = 0.5, as w2s-analyze)",
    )
    p.add_argument("--budget", type=float, default=None, help="absolute budget per example")
    p.add_argument("--cost-weak", type=float, default=None)
    p.add_argument("--cost-strong", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: train.eval_batch_size")
    p.add_argument(
        "--no-baselines", action="store_true",
        help="skip the weak-only and strong-only timing passes",
    )
    p.add_argument("--out", required=True, help="answers, one JSON object per input (.jsonl)")
    p.add_argument("--summary", help="summary JSON (default: OUT with .summary.json)")
    return p


# -- choosing the pair and its threshold ------------------------------------------------------

def choose_unit(args: argparse.Namespace) -> tuple[dict, pd.Series]:
    """The cascade unit and its budget row, as ``w2s-analyze`` computes them."""
    if args.budget is not None and args.budget_share is not None:
        raise SystemExit("w2s-cascade: give --budget or --budget-share, not both")
    if args.budget is not None:
        budget: Budget = budgets_from_args(None, [args.budget])[0]
    else:
        share = 0.5 if args.budget_share is None else args.budget_share
        budget = budgets_from_args([share], None)[0]
    runs, _ = load_runs(args.results_dir)
    if runs.empty:
        raise SystemExit(f"w2s-cascade: no finished runs under {args.results_dir}")
    pairs = pair_runs(runs, resolve_group_keys(runs, None))
    res = run_cascades(pairs, PredictionStore(), args.cost_weak, args.cost_strong, [budget])
    rows = res.budgets
    if rows.empty:
        raise SystemExit(
            f"w2s-cascade: no (weak, ceiling) pair with test predictions under "
            f"{args.results_dir}; the cascade needs a w2s experiment's weak and ceiling runs"
        )
    for col, want in (("task", args.task), ("weak_model", args.weak_model),
                      ("strong_model", args.strong_model), ("seed", args.seed)):
        if want is not None:
            rows = rows[rows[col] == want]
    if len(rows) != 1:
        listing = res.budgets[["task", "weak_model", "strong_model", "seed"]].to_string(index=False)
        what = "no pair matches" if rows.empty else f"{len(rows)} pairs match"
        raise SystemExit(
            f"w2s-cascade: {what}; choose one with --task/--weak-model/--strong-model/--seed "
            f"from:\n{listing}"
        )
    row = rows.iloc[0]
    if not np.isfinite(row["tau"]):
        raise SystemExit(
            f"w2s-cascade: the budget {row['budget']:g} ({row['cost_unit']}) is below the weak "
            "model's own cost: no threshold fits it"
        )
    dirs = {r: pairs.loc[pairs[f"{r}_run"] == row[f"{r}_run"], f"{r}_dir"].iloc[0]
            for r in ("weak", "ceiling")}
    return dirs, row


# -- rebuilding the two models ---------------------------------------------------------------

def _read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"w2s-cascade: {path} not found")
    return yaml.safe_load(path.read_text())


def load_served(run_dir: str | Path, num_labels: int, batch_size: int | None) -> Served:
    """The run's model with its kept weights, and how it tokenizes and batches."""
    from w2s.data.tokenize import load_tokenizer
    from w2s.models import load_classifier
    from w2s.models.hub import resolve
    from w2s.train.batches import fit_buckets
    from w2s.train.loop import restore_params

    run_dir = Path(run_dir)
    cfg = _read_config(run_dir)
    weights = run_dir / "weights"
    if not weights.exists():
        raise SystemExit(
            f"w2s-cascade: {run_dir} ({cfg['kind']} run) has no kept weights; rerun the "
            f"experiment with save_weights=[weak,ceiling] (finished runs without weights are "
            "trained again, to the same numbers)"
        )
    m, tr, task = cfg["model"], cfg["train"], cfg["data"]["task"]
    path = str(resolve(m["path"]))
    model = load_classifier(
        path, num_labels, pooling=m["pooling"], dtype=m["param_dtype"],
        compute_dtype=m["compute_dtype"], overrides=dict(m.get("overrides") or {}),
        attention=tr["attention"], scan_layers=tr["scan_layers"],
    )
    restore_params(model, weights)
    classes = [str(c) for c in task.get("classes") or []] or [str(k) for k in range(num_labels)]
    name = cfg["header"].get("weak_model") or cfg["header"].get("strong_model")
    return Served(
        name=name,
        model=model,
        tokenizer=load_tokenizer(path),
        max_length=int(task["max_length"]),
        buckets=fit_buckets(list(tr["buckets"]), int(task["max_length"])),
        batch_size=int(batch_size or tr["eval_batch_size"]),
        classes=classes,
    )


# -- inputs ------------------------------------------------------------------------------------

def _label_index(value: object, classes: list[str], where: str, row: int) -> int:
    from w2s.data.local import as_int

    k = as_int(value)
    if k is None and str(value) in classes:
        k = classes.index(str(value))
    if k is None or not 0 <= k < len(classes):
        raise SystemExit(
            f"w2s-cascade: {where}: row {row}: label {value!r} is neither a class index "
            f"0..{len(classes) - 1} nor one of {classes}"
        )
    return k


def read_inputs(args, classes: list[str], weak_dir: str) -> tuple[list[str], list[str], np.ndarray | None]:
    """(ids, texts, gold labels or None) from --inputs, or the weak run's own split."""
    if args.split:
        from w2s.config import TaskConfig
        from w2s.data import load_task

        cfg = _read_config(Path(weak_dir))
        task_cfg = TaskConfig(name=cfg["header"]["task"], **cfg["data"]["task"])
        task = load_task(task_cfg, Path(args.cache_dir).expanduser())
        preds = pd.read_parquet(Path(weak_dir) / "predictions.parquet", columns=["id", "split"])
        ids = preds.loc[preds["split"] == args.split, "id"].astype(str).tolist()
        where = {i: k for k, i in enumerate(task.ids)}
        missing = [i for i in ids if i not in where]
        if missing:
            raise SystemExit(
                f"w2s-cascade: {len(missing)} {args.split} ids of {weak_dir} are not in task "
                f"{task.name!r} as loaded now (first: {missing[0]!r}); has its data changed?"
            )
        rows = [where[i] for i in ids]
        return ids, [task.texts[r] for r in rows], task.labels[rows]
    from w2s.data.io import read_table, require_columns

    df = read_table(args.inputs)
    if len(df) == 0:
        raise SystemExit(f"w2s-cascade: {args.inputs}: no rows")
    require_columns(df, [args.text_column], args.inputs)
    texts = df[args.text_column].tolist()
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise SystemExit(f"w2s-cascade: {args.inputs}: row {i}: text {t!r} is not a string")
    ids = df["id"].astype(str).tolist() if "id" in df.columns else [str(i) for i in range(len(df))]
    labels = None
    if args.label_column in df.columns:
        labels = np.array([
            _label_index(v, classes, args.inputs, i) for i, v in enumerate(df[args.label_column])
        ])
    return ids, texts, labels


# -- answering -------------------------------------------------------------------------------

def _view(served: Served, texts: list[str]):
    from w2s.data.tokenize import tokenize
    from w2s.train.loop import View

    tok = tokenize(texts, served.tokenizer, served.max_length, "truncate")
    return View(tok.ids, int(served.tokenizer.pad_token_id))


def _predict(served: Served, view) -> tuple[np.ndarray, float]:
    """Probabilities and the seconds spent running (compiling left out)."""
    from w2s.timing import timed
    from w2s.train.loop import predict

    if len(view.ids) == 0:
        return np.zeros((0, len(served.classes)), np.float32), 0.0
    with timed() as t:
        probs = predict(served.model, view, served.batch_size, served.buckets)
    return probs, max(t["seconds"] - t["compile"], 1e-9)


def answer(weak: Served, strong: Served, texts: list[str], tau: float, baselines: bool) -> dict:
    """The cascade's answers and timings; weak-only and strong-only passes when ``baselines``."""
    weak_view, strong_view = _view(weak, texts), _view(strong, texts)
    weak_probs, t_weak = _predict(weak, weak_view)
    weak_conf = weak_probs.max(axis=1)
    deferred = weak_conf < tau
    index = np.flatnonzero(deferred)
    strong_probs, t_strong = _predict(strong, strong_view.take(index))
    probs = weak_probs.copy()
    probs[index] = strong_probs
    out = {
        "probs": probs,
        "weak_probs": weak_probs,
        "weak_confidence": weak_conf,
        "deferred": deferred,
        "seconds": {"cascade": t_weak + t_strong, "weak_part": t_weak, "strong_part": t_strong},
    }
    if baselines:  # weak-only is the cascade's own weak pass over every input
        out["seconds"]["weak_only"] = t_weak
        out["strong_only_probs"], out["seconds"]["strong_only"] = _predict(strong, strong_view)
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    """Answers land whole or not at all: written next to the target, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import w2s.runtime  # noqa: F401  (CPU allocator settings, as for training)

    dirs, row = choose_unit(args)
    num_labels = len(PredictionStore().get(dirs["weak"]).probs[0])
    weak = load_served(dirs["weak"], num_labels, args.batch_size)
    strong = load_served(dirs["ceiling"], num_labels, args.batch_size)
    ids, texts, labels = read_inputs(args, weak.classes, dirs["weak"])
    tau = float(row["tau"])
    res = answer(weak, strong, texts, tau, baselines=not args.no_baselines)
    pred = res["probs"].argmax(axis=1)
    conf = res["probs"].max(axis=1)
    answers = []
    for i, k in enumerate(pred):
        d = bool(res["deferred"][i])
        r = {
            "id": ids[i],
            "answer": weak.classes[k],
            "label_index": int(k),
            "model": strong.name if d else weak.name,
            "deferred": d,
            "confidence": float(conf[i]),
            "weak_confidence": float(res["weak_confidence"][i]),
        }
        if labels is not None:
            r["gold"] = weak.classes[int(labels[i])]
            r["correct"] = bool(k == labels[i])
        answers.append(r)
    n = len(texts)
    sec = res["seconds"]
    summary = {
        "results_dir": str(args.results_dir),
        "task": row["task"], "weak_model": row["weak_model"], "strong_model": row["strong_model"],
        "seed": int(row["seed"]), "weak_run": row["weak_run"], "ceiling_run": row["ceiling_run"],
        "budget_label": row["budget_label"], "budget": float(row["budget"]),
        "cost_unit": row["cost_unit"], "tau": tau,
        "val_accuracy": float(row["val_accuracy"]), "val_share": float(row["val_share"]),
        "analysis_test_accuracy": float(row["test_accuracy"]),
        "analysis_test_share": float(row["test_share"]),
        "inputs": args.inputs or f"split {args.split}", "n": n,
        "strong_calls": int(res["deferred"].sum()),
        "strong_share": float(res["deferred"].mean()) if n else float("nan"),
        "examples_per_second": {k: n / v for k, v in sec.items() if k in
                                ("cascade", "weak_only", "strong_only")},
        "seconds": sec,
    }
    if labels is not None:
        summary["accuracy"] = float(np.mean(pred == labels))
        summary["weak_only_accuracy"] = float(np.mean(res["weak_probs"].argmax(1) == labels))
        if "strong_only_probs" in res:
            summary["strong_only_accuracy"] = float(
                np.mean(res["strong_only_probs"].argmax(1) == labels)
            )
    out = Path(args.out)
    _write_jsonl(out, answers)
    summary_path = Path(args.summary) if args.summary else out.with_suffix(".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, out, summary_path)
    return 0


def print_summary(s: dict, out: Path, summary_path: Path) -> None:
    eps = s["examples_per_second"]
    print(f"cascade {s['weak_model']} -> {s['strong_model']} on {s['task']} (seed {s['seed']}): "
          f"{s['n']} inputs ({s['inputs']}), budget {s['budget_label']} = {s['budget']:.4g} "
          f"{s['cost_unit']}, tau {s['tau']:.4f} (chosen on val)")
    line = f"  strong calls {s['strong_calls']} ({s['strong_share']:.3f})"
    if "accuracy" in s:
        line += f"  accuracy {s['accuracy']:.4f} (weak only {s['weak_only_accuracy']:.4f}"
        if "strong_only_accuracy" in s:
            line += f", strong only {s['strong_only_accuracy']:.4f}"
        line += ")"
    print(line + f"   [w2s-analyze on test: accuracy {s['analysis_test_accuracy']:.4f}, "
                 f"share {s['analysis_test_share']:.3f}]")
    speed = "  examples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in eps.items())
    if "strong_only" in eps:
        speed += f"  (cascade / strong-only = {eps['cascade'] / eps['strong_only']:.2f}x)"
    print(speed)
    print(f"  answers: {out}\n  summary: {summary_path}")


if __name__ == "__main__":
    sys.exit(main())
