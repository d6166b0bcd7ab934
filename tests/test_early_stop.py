"""Early stopping: weak and ceiling runs train until their val loss stops falling.

The loop is driven by scripted val losses, so when it must stop and which parameters it must
keep are known in advance; the pipeline test checks the recorded curve against the stopping
rule and the kept model's val loss against the predictions it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from tests.conftest import compose, tiny_overrides
from w2s.config import TrainConfig
from w2s.data import load_tokenizer
from w2s.models import load_classifier
from w2s.train.loop import Stop, View, train_group
from w2s.train.losses import step_loss


def _setup(tiny_env, n=64):
    rows = [json.loads(x) for x in Path(tiny_env["data"]).read_text().splitlines()][:n]
    tok = load_tokenizer(tiny_env["weak"])
    view = View([np.asarray(tok(r["text"])["input_ids"][:32], np.int32) for r in rows],
                tok.pad_token_id)
    labels = np.array([r["label"] for r in rows])
    cfg = OmegaConf.structured(TrainConfig(epochs=1, batch_size=16, buckets=[32],
                                           progress=False, warmup_frac=0.0))
    return view, labels, cfg


def _scripted(losses_per_seed):
    """An evaluator that reports the given val losses in turn and keeps what it was shown."""
    seen = []

    def evaluate(graphdef, states):
        i = len(seen)
        seen.append([jax.device_get(s) for s in states])
        return [{"accuracy": 0.5, "loss": losses[i]} for losses in losses_per_seed]

    return evaluate, seen


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.parametrize("k", [1, 2])
def test_stops_after_patience_and_keeps_the_best(tiny_env, k):
    view, labels, cfg = _setup(tiny_env)
    per_epoch = 4  # 64 rows, batch 16, one bucket
    # seed 0: best at eval 2, then two evaluations without a lower loss -> out at eval 4;
    # seed 1: a fall smaller than min_delta does not count -> best eval 1, out at eval 3.
    script = [[1.0, 0.8, 0.85, 0.9, 0.1, 0.1], [0.5, 0.499, 0.6, 0.7, 0.7, 0.7]][:k]
    evaluate, seen = _scripted(script)
    models = [load_classifier(tiny_env["weak"], 2, pooling="mean") for _ in range(k)]
    targets = np.eye(2, dtype=np.float32)[labels]
    results = train_group(
        models, view, [targets] * k, labels, cfg, seeds=list(range(k)), loss_fn=step_loss(),
        loss_key=("stop", k), lr=1e-2, buckets=[32], evaluate=evaluate,
        stop=Stop(patience=2, max_epochs=6, min_delta=0.01),
    )
    last_eval = 4  # seed 0 runs out last; vmapped seeds stop together
    assert len(seen) == last_eval
    best_eval = [2, 1][:k]
    for j, r in enumerate(results):
        assert r.max_steps == 6 * per_epoch
        assert r.steps == last_eval * per_epoch
        assert [s for s, _ in r.val_loss_curve] == [per_epoch * (i + 1) for i in range(last_eval)]
        assert r.selected_step == best_eval[j] * per_epoch
        assert r.stopped_at == [4, 3][j] * per_epoch
        kept = _leaves(nnx.state(models[j]))
        shown = _leaves(seen[best_eval[j] - 1][j])
        for a, b in zip(kept, shown, strict=True):
            np.testing.assert_array_equal(a, b)
        later = _leaves(seen[-1][j])
        assert any(not np.array_equal(a, b) for a, b in zip(kept, later, strict=True))


def _budget_script(n):
    return [[1.0 - 0.1 * i for i in range(n)]]


def test_budget_runs_out_while_val_loss_still_falls_is_flagged(tiny_env):
    from w2s.diagnostics import diagnose, val_still_falling

    view, labels, cfg = _setup(tiny_env)
    evaluate, _ = _scripted(_budget_script(6))
    model = load_classifier(tiny_env["weak"], 2, pooling="mean")
    (r,) = train_group(
        [model], view, [np.eye(2, dtype=np.float32)[labels]], labels, cfg, seeds=[0],
        loss_fn=step_loss(), loss_key="budget", lr=1e-2, buckets=[32], evaluate=evaluate,
        stop=Stop(patience=2, max_epochs=3, every=2),
    )
    assert r.stopped_at is None and r.steps == r.max_steps == 12
    assert [s for s, _ in r.val_loss_curve] == [2, 4, 6, 8, 10, 12]
    assert r.selected_step == 12  # the lowest val loss was the last
    assert val_still_falling(r.val_loss_curve)
    probs = {"test": np.tile([0.9, 0.1], (4, 1))}
    flags = diagnose(r.history, probs, np.array([0, 1, 0, 1]), 2,
                     val_loss_curve=r.val_loss_curve)["flags"]
    assert "not_converged" in flags
    assert not val_still_falling([[2, 1.0], [4, 0.7], [6, 0.8]])


def _run(overrides):
    from w2s.cli import run

    return run(compose(overrides))


def _metrics(results: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob(f"runs/{kind}/*/metrics.json"))]


def test_weak_and_ceiling_stop_on_val_loss_by_default_w2s_trains_its_epochs(tiny_env, tmp_path):
    import pandas as pd

    _run(tiny_overrides(tiny_env, tmp_path, "train.epochs=2", "train.early_stop.max_epochs=8",
                        "train.early_stop.patience=1"))
    (weak,), (ceiling,), (w2s,) = (_metrics(tmp_path, k) for k in ("weak", "ceiling", "w2s"))
    per_epoch = 10  # 160 rows, batch 16
    for run in (weak, ceiling):
        assert run["early_stop"] and run["select"] == "best_val_loss"
        assert run["max_steps"] == 8 * per_epoch
        curve = run["val_loss_curve"]
        steps = [s for s, _ in curve]
        assert steps == list(range(per_epoch, run["steps"] + 1, per_epoch))
        losses = [v for _, v in curve]
        best = int(np.argmin(losses))
        assert run["selected_step"] == steps[best]
        if run["stopped_at"] is not None:  # patience 1: the first evaluation without a new best
            rises = [i for i in range(1, len(losses)) if losses[i] >= min(losses[:i])]
            assert run["stopped_at"] == steps[rises[0]] == run["steps"]
        else:
            assert run["steps"] == run["max_steps"]
        # the kept model's val loss, from the val predictions it wrote, is the best on the curve
        preds = pd.read_parquet(tmp_path / "runs" / run["kind"] / run["run_id"] /
                                "predictions.parquet").query("split == 'val'")
        p = np.stack(preds.probs)
        nll = -np.mean(np.log(p[np.arange(len(p)), preds.label.to_numpy()]))
        assert nll == pytest.approx(losses[best], rel=1e-4)
    assert not w2s["early_stop"] and w2s["steps"] == w2s["max_steps"] == 2 * per_epoch
    assert w2s["val_loss_curve"] == [] and w2s["stopped_at"] is None


def test_early_stop_settings_enter_the_ids_of_the_runs_they_change(tiny_env):
    from w2s import runs

    cfg = compose(tiny_overrides(tiny_env, Path("/tmp/unused")))
    other = compose(tiny_overrides(tiny_env, Path("/tmp/unused"), "train.early_stop.patience=5"))
    more_epochs = compose(tiny_overrides(tiny_env, Path("/tmp/unused"), "train.epochs=9"))
    def tid(c, kind):
        return runs.train_identity(c, kind, c.strong)

    assert tid(cfg, "ceiling") != tid(other, "ceiling")
    assert tid(cfg, "w2s") == tid(other, "w2s")
    # epochs only govern the runs that do not stop early
    assert tid(cfg, "ceiling") == tid(more_epochs, "ceiling")
    assert tid(cfg, "w2s") != tid(more_epochs, "w2s")


@pytest.mark.parametrize("bad, message", [
    ("train.early_stop.runs=[weak,student]", "unknown kind"),
    ("train.early_stop.patience=0", "patience >= 1"),
    ("task.n_val=0", "task.n_val=0"),
])
def test_bad_early_stop_settings_are_refused(tiny_env, tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        _run(tiny_overrides(tiny_env, tmp_path, bad))
    assert not list(tmp_path.glob("runs/*/*/metrics.json"))
