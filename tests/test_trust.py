"""Numbers a run reports are what their labels say: checked against independent computations
(weights restored from disk and run on the raw texts, hand values), never against the file a
number was copied from.

- the w2s step receives the weak model's predictions on B (and a s2s round the previous
  round's), a live teacher sees the same texts in its own tokens;
- w2s runs record the ids of the runs they were supervised by and compared with; with several
  supervisors the combined labels are scored;
- forced reruns start from pretrained weights; finished runs keep no checkpoints;
- the split identity includes the rows kept after tokenization;
- cached labels are tempered like a live teacher;
- model selection on val sees weak labels only (w2s) and the recorded curve is the real one;
- provenance and backbone change.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from tests.conftest import compose, tiny_overrides

FAST = ("train.epochs=3",)


def _run(overrides):
    from w2s.cli import run

    return run(compose(overrides))


def _metrics(results: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob(f"runs/{kind}/*/metrics.json"))]


def _preds(results: Path, kind: str, rid: str) -> pd.DataFrame:
    return pd.read_parquet(results / "runs" / kind / rid / "predictions.parquet")


def _texts(env) -> dict[str, str]:
    rows = [json.loads(x) for x in Path(env["data"]).read_text().splitlines()]
    return {r["id"]: r["text"] for r in rows}


def _probs_from_weights(model_dir, weights: Path | None, texts: list[str], max_length=32):
    """The classifier's probabilities on raw texts: its own tokenizer, weights from disk."""
    from transformers import AutoTokenizer

    from w2s.models import load_classifier
    from w2s.train.loop import restore_params

    model = load_classifier(str(model_dir), 2, pooling="mean")
    if weights is not None:
        restore_params(model, weights)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.truncation_side = "left"  # the pipeline keeps an overlong text's last tokens
    enc = tok(texts, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")
    logits = model(enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32))
    return np.asarray(jax.nn.softmax(logits, -1))


@pytest.fixture
def received(monkeypatch):
    """What each call of the trainer received: (desc, targets per model, the trained models)."""
    import w2s.pipeline

    calls = []
    real = w2s.pipeline.train_group

    def spy(models, view, targets, *args, **kwargs):
        out = real(models, view, targets, *args, **kwargs)
        calls.append({"desc": kwargs["desc"], "targets": [np.array(t) for t in targets],
                      "models": models})
        return out

    monkeypatch.setattr(w2s.pipeline, "train_group", spy)
    return calls


def _call(calls, prefix):
    (c,) = [c for c in calls if c["desc"].startswith(prefix)]
    return c


def test_w2s_step_receives_the_weak_models_predictions_and_ids(tiny_env, tmp_path, received):
    _run(tiny_overrides(tiny_env, tmp_path, *FAST))
    (weak,), (ceiling,), (w2s,) = (_metrics(tmp_path, k) for k in ("weak", "ceiling", "w2s"))
    assert w2s["weak_runs"] == [weak["run_id"]] and w2s["ceiling_run"] == ceiling["run_id"]
    b_ids = list(_preds(tmp_path, "w2s", w2s["run_id"]).query("split == 'b'").id)
    texts = _texts(tiny_env)
    expected = _probs_from_weights(tiny_env["weak"], tmp_path / "runs/weak" / weak["run_id"] /
                                   "weights", [texts[i] for i in b_ids])
    (targets,) = _call(received, "w2s")["targets"]
    assert targets.shape == (160, 2)
    np.testing.assert_allclose(targets, expected, atol=2e-5)
    assert w2s["supervisor_accuracy"] == pytest.approx(weak["accuracy"])
    assert w2s["supervision_confidence"] == pytest.approx(float(expected.max(1).mean()), abs=1e-5)
    assert isinstance(w2s["flags"], list) and np.isfinite(w2s["loss_trend_last20"])


def test_strong_to_strong_round_receives_the_previous_models_predictions(tiny_env, tmp_path,
                                                                        received):
    _run(tiny_overrides(tiny_env, tmp_path, *FAST, "s2s_rounds=1", "kinds=[weak,w2s]"))
    first, second = [c for c in received if c["desc"].startswith("w2s")]
    (round0,) = [m for m in _metrics(tmp_path, "w2s") if "previous_run" not in m]
    b_ids = list(_preds(tmp_path, "w2s", round0["run_id"]).query("split == 'b'").id)
    texts = [_texts(tiny_env)[i] for i in b_ids]
    # the round-0 model as trained (in memory), run on the raw texts with its own tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_env["strong"]))
    enc = tok(texts, padding="max_length", truncation=True, max_length=32, return_tensors="np")
    logits = first["models"][0](enc["input_ids"].astype(np.int32),
                                enc["attention_mask"].astype(np.int32))
    np.testing.assert_allclose(second["targets"][0], np.asarray(jax.nn.softmax(logits, -1)),
                               atol=2e-5)
    assert not np.allclose(second["targets"][0], first["targets"][0], atol=1e-2)


def test_live_teacher_sees_the_same_texts_in_its_own_tokens(tiny_env, tmp_path, monkeypatch):
    import w2s.train.loop as loop
    from w2s.data import load_tokenizer

    seen = []
    real = loop._batch_arrays

    def spy(*args):
        out = real(*args)
        if "teacher_input_ids" in out:
            seen.append(out)
        return out

    monkeypatch.setattr(loop, "_batch_arrays", spy)
    _run(tiny_overrides(tiny_env, tmp_path, "train.epochs=1", f"weak.path={tiny_env['weak_chars']}",
                        "weak.name=tiny-chars", "loss=kd", "kinds=[weak,w2s]", "task.max_length=64",
                        "train.buckets=[64]"))
    strong, weak = load_tokenizer(tiny_env["strong"]), load_tokenizer(tiny_env["weak_chars"])
    texts = set(_texts(tiny_env).values())
    assert seen
    n = 0
    n_cut = 0
    for b in seen:
        for s_ids, t_ids, t_mask, w in zip(b["input_ids"], b["teacher_input_ids"],
                                           b["teacher_attention_mask"], b["weight"], strict=True):
            if w == 0:
                continue
            s = strong.decode(s_ids, skip_special_tokens=True).replace(" ", "")
            t = weak.decode(t_ids, skip_special_tokens=True).replace(" ", "").replace("##", "")
            assert any(s == x.replace(" ", "") for x in texts)
            # the same text; an overlong one keeps its last 64 character tokens (left truncation)
            assert s == t or (s.endswith(t) and t_mask.sum() == 64), (s, t)
            n_cut += s != t
            n += 1
    assert 0 < n_cut < n
    assert n == 160  # every row of B, once (one epoch)


def test_several_supervisors_are_scored_as_combined(tiny_env, tmp_path):
    extra = f"extra_weak=[{{name:tiny-chars,path:{tiny_env['weak_chars']},pooling:mean,lr:0.01}}]"
    _run(tiny_overrides(tiny_env, tmp_path, *FAST, extra, "kinds=[weak,w2s]"))
    weak = {m["weak_model"]: m for m in _metrics(tmp_path, "weak")}
    (w2s,) = _metrics(tmp_path, "w2s")
    assert w2s["weak_runs"] == [weak["tiny-weak"]["run_id"], weak["tiny-chars"]["run_id"]]
    test = _preds(tmp_path, "w2s", w2s["run_id"]).query("split == 'test'")
    texts = [_texts(tiny_env)[i] for i in test.id]
    a = _probs_from_weights(tiny_env["weak"], tmp_path / "runs/weak" / weak["tiny-weak"]["run_id"]
                            / "weights", texts)
    b = _probs_from_weights(tiny_env["weak_chars"], tmp_path / "runs/weak" /
                            weak["tiny-chars"]["run_id"] / "weights", texts, max_length=32)
    combined = (a + b) / 2
    assert w2s["supervisor_accuracy"] == pytest.approx(
        float(np.mean(combined.argmax(1) == test.label)))
    members = {m["model"]: m["accuracy"] for m in w2s["supervisor_members"]}
    assert members["tiny-chars"] == pytest.approx(float(np.mean(b.argmax(1) == test.label)))
    np.testing.assert_allclose(np.stack(test.weak_soft), combined, atol=2e-5)


def test_force_starts_from_pretrained_and_checkpoints_are_removed(tiny_env, tmp_path):
    base = tiny_overrides(tiny_env, tmp_path, "kinds=[ceiling]", "train.epochs=2",
                          "train.checkpoint_every=4")
    _run(base)
    (m,) = _metrics(tmp_path, "ceiling")
    run_dir = tmp_path / "runs/ceiling" / m["run_id"]
    assert not (run_dir / "checkpoints").exists()  # removed when the run finished
    _run([*base, "force=true", "train.keep_checkpoints=true"])
    assert any(p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())  # kept: final step
    _run([*base, "force=true", "train.keep_checkpoints=true"])  # the final checkpoint is there
    (again,) = _metrics(tmp_path, "ceiling")
    assert again["resumed_from"] == 0 and again["loss_history"][0][0] <= 10
    assert again["loss_history"] == m["loss_history"] and again["accuracy"] == m["accuracy"]


def test_split_identity_includes_the_rows_kept(tiny_env, tmp_path):
    """Two strong tokenizers that drop different overlong rows never share a weak run."""
    sizes = ("task.n_a=80", "task.n_b=80", "task.n_val=20", "task.n_test=60", "task.max_length=64",
             "train.buckets=[64]", "task.overlong=drop", "train.epochs=1", "kinds=[weak,w2s]")
    _run(tiny_overrides(tiny_env, tmp_path, *sizes))
    _run(tiny_overrides(tiny_env, tmp_path, *sizes, f"strong.path={tiny_env['weak_chars']}",
                        "strong.name=tiny-chars-strong"))
    weak = _metrics(tmp_path, "weak")
    assert len(weak) == 2 and weak[0]["rows"] != weak[1]["rows"]
    for w2s in _metrics(tmp_path, "w2s"):
        mine = _preds(tmp_path, "w2s", w2s["run_id"])
        sup = _preds(tmp_path, "weak", w2s["weak_run"])
        for split in ("b", "test"):
            assert list(mine[mine.split == split].id) == list(sup[sup.split == split].id)


def test_cached_labels_are_tempered_like_a_live_teacher(tiny_env, tmp_path, received):
    from w2s.supervision import temper

    np.testing.assert_allclose(temper(np.array([[0.8, 0.2]]), 2.0), [[2 / 3, 1 / 3]], atol=1e-6)
    np.testing.assert_allclose(temper(np.array([[0.5, 0.25, 0.25]]), 0.5),
                               [[4 / 6, 1 / 6, 1 / 6]], atol=1e-6)
    _run(tiny_overrides(tiny_env, tmp_path, "train.epochs=1", "loss=kd", "loss.supervision=labels",
                        "loss.temperature=2.0", "kinds=[weak,w2s]"))
    (weak,) = _metrics(tmp_path, "weak")
    (w2s,) = _metrics(tmp_path, "w2s")
    assert w2s["loss"] == "kd_fkl_T2_cached"
    b_ids = list(_preds(tmp_path, "w2s", w2s["run_id"]).query("split == 'b'").id)
    q = _probs_from_weights(tiny_env["weak"], tmp_path / "runs/weak" / weak["run_id"] / "weights",
                            [_texts(tiny_env)[i] for i in b_ids])
    tempered = np.sqrt(q) / np.sqrt(q).sum(1, keepdims=True)  # softmax(log q / 2), by hand
    np.testing.assert_allclose(_call(received, "w2s")["targets"][0], tempered, atol=2e-5)


def test_model_selection_sees_only_weak_labels_on_val(tiny_env, tmp_path):
    _run(tiny_overrides(tiny_env, tmp_path, "train.eval_every=5", "train.select=best",
                        "train.early_stop.runs=[]",  # every run selects by val accuracy
                        f"weak.path={tiny_env['weak_chars']}", "weak.name=tiny-chars"))
    (weak,), (ceiling,), (w2s,) = (_metrics(tmp_path, k) for k in ("weak", "ceiling", "w2s"))
    steps = [s for s, _ in w2s["eval_curve"]]
    assert steps[:3] == [5, 10, 15] and steps[-1] == w2s["steps"]
    best = max(v for _, v in w2s["eval_curve"])
    assert dict(map(tuple, w2s["eval_curve"]))[w2s["selected_step"]] == best
    first_best = next(s for s, v in w2s["eval_curve"] if v == best)
    assert w2s["selected_step"] == first_best
    # the kept model's val predictions agree with the weak model's val labels at that score
    mine = _preds(tmp_path, "w2s", w2s["run_id"]).query("split == 'val'").set_index("id")
    sup = _preds(tmp_path, "weak", weak["run_id"]).query("split == 'val'").set_index("id")
    agree = np.mean(np.stack(mine.probs).argmax(1) == np.stack(sup.loc[mine.index].probs).argmax(1))
    assert agree == pytest.approx(best)
    gt = np.mean(np.stack(mine.probs).argmax(1) == mine.label)
    assert gt != pytest.approx(agree)  # the weak labels on val are not the ground truth
    # the ceiling selects by ground truth: its kept model's val accuracy is its best score
    assert ceiling["val_accuracy"] == pytest.approx(max(v for _, v in ceiling["eval_curve"]))


def test_provenance_and_backbone_change(tiny_env, tmp_path):
    _run(tiny_overrides(tiny_env, tmp_path, *FAST, "kinds=[weak]"))
    _run(tiny_overrides(tiny_env, tmp_path / "frozen", "train.epochs=1", "kinds=[weak]",
                        "weak.lr=0.0"))
    (m,) = _metrics(tmp_path, "weak")
    assert m["code_version"] == metadata.version("w2s")
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert m["git_commit"] == (head or None)
    h = hashlib.sha256()
    for f in sorted(p for p in Path(tiny_env["weak"]).iterdir()
                    if p.suffix in (".json", ".safetensors")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    assert m["models"]["tiny-weak"]["checkpoint"] == f"sha256:{h.hexdigest()[:16]}"
    # ||θ − θ0|| / ||θ0|| over the backbone, from the pretrained and the restored weights
    from w2s.models import load_classifier
    from w2s.train.loop import restore_params

    before = load_classifier(str(tiny_env["weak"]), 2, pooling="mean")
    after = restore_params(load_classifier(str(tiny_env["weak"]), 2, pooling="mean"),
                           tmp_path / "runs/weak" / m["run_id"] / "weights")
    b0 = [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.state(before.backbone, nnx.Param))]
    b1 = [np.asarray(x, np.float64) for x in jax.tree.leaves(nnx.state(after.backbone, nnx.Param))]
    expected = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(b1, b0, strict=True))
                       / sum((b**2).sum() for b in b0))
    assert expected > 1e-3 and m["backbone_change"] == pytest.approx(expected, rel=1e-4)
    (frozen,) = _metrics(tmp_path / "frozen", "weak")
    assert frozen["backbone_change"] == 0.0
    assert frozen["predict_seconds_per_example"] > 0
