"""w2s-cascade on tiny models: kept weights, the val-chosen threshold, answers that reproduce
the analysis' budget row and the runs' stored test predictions, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose, tiny_overrides


def run(overrides):
    from w2s.cli import run as cli_run

    return cli_run(compose(overrides))


def serve(*argv) -> dict:
    from analysis.serve import main

    assert main([str(a) for a in argv]) == 0
    out = Path(argv[argv.index("--out") + 1])
    return json.loads(out.with_suffix(".summary.json").read_text())


def stored_test(run_dir: Path) -> pd.DataFrame:
    p = pd.read_parquet(run_dir / "predictions.parquet")
    return p[p.split == "test"].set_index("id")


@pytest.fixture(scope="module")
def served(tiny_env, tmp_path_factory):
    """An experiment first run without the ceiling's weights, then asked to keep them."""
    results = tmp_path_factory.mktemp("cascade")
    run(tiny_overrides(tiny_env, results))
    ceiling = next((results / "runs" / "ceiling").glob("*"))
    before = json.loads((ceiling / "metrics.json").read_text())
    weak = next((results / "runs" / "weak").glob("*"))
    weak_mtime = (weak / "metrics.json").stat().st_mtime_ns
    no_weights = None
    try:
        serve(results, "--split", "test", "--out", results / "x.jsonl")
    except SystemExit as e:
        no_weights = str(e)
    run(tiny_overrides(tiny_env, results, "save_weights=[weak,ceiling]"))
    return {
        "results": results, "ceiling": ceiling, "weak": weak, "before": before,
        "weak_mtime": weak_mtime, "no_weights": no_weights,
    }


def test_missing_weights_are_named_then_trained_again_to_the_same_numbers(served):
    assert "no kept weights" in served["no_weights"] and "save_weights" in served["no_weights"]
    assert (served["ceiling"] / "weights").is_dir()
    after = json.loads((served["ceiling"] / "metrics.json").read_text())
    assert after["accuracy"] == served["before"]["accuracy"]
    assert after["run_id"] == served["before"]["run_id"]
    # the weak run already had its weights: reused, not trained again
    assert (served["weak"] / "metrics.json").stat().st_mtime_ns == served["weak_mtime"]


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_test_split_answers_match_the_budget_row_and_stored_predictions(served, tmp_path, share):
    out = tmp_path / "answers.jsonl"
    s = serve(served["results"], "--split", "test", "--budget-share", share, "--out", out)
    answers = pd.read_json(out, lines=True, dtype=False).set_index("id")
    assert s["n"] == len(answers) == 120
    # w2s-analyze's row for this budget, and the cascade recomputed from the stored predictions
    assert s["accuracy"] == pytest.approx(s["analysis_test_accuracy"], abs=1e-12)
    assert s["strong_share"] == pytest.approx(s["analysis_test_share"], abs=1e-12)
    weak, strong = stored_test(served["weak"]), stored_test(served["ceiling"])
    weak_probs = np.stack(weak.loc[answers.index, "probs"])
    strong_probs = np.stack(strong.loc[answers.index, "probs"])
    defer = weak_probs.max(1) < s["tau"]
    want = np.where(defer, strong_probs.argmax(1), weak_probs.argmax(1))
    np.testing.assert_array_equal(answers["label_index"].to_numpy(), want)
    np.testing.assert_array_equal(answers["deferred"].to_numpy(), defer)
    assert set(answers.loc[defer, "model"]) <= {"tiny-strong"}
    assert set(answers.loc[~defer, "model"]) <= {"tiny-weak"}
    np.testing.assert_allclose(answers["weak_confidence"], weak_probs.max(1), atol=1e-5)
    gold = weak.loc[answers.index, "label"].to_numpy()
    assert s["weak_only_accuracy"] == pytest.approx(np.mean(weak_probs.argmax(1) == gold))
    assert s["strong_only_accuracy"] == pytest.approx(np.mean(strong_probs.argmax(1) == gold))
    assert set(s["examples_per_second"]) == {"cascade", "weak_only", "strong_only"}
    assert all(v > 0 for v in s["examples_per_second"].values())


def test_inputs_file_with_class_names_and_errors(served, tmp_path):
    texts = ["good w1 w2", "bad w3", "w4 good good w5 bad", "w6"]
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                         for t, lab in zip(texts, ["1", "0", 1, 0], strict=True)))
    out = tmp_path / "a.jsonl"
    s = serve(served["results"], "--inputs", f, "--out", out, "--no-baselines")
    answers = pd.read_json(out, lines=True, dtype=False)
    assert len(answers) == 4 and s["strong_calls"] == int(answers["deferred"].sum())
    assert set(s["examples_per_second"]) == {"cascade"}
    assert "accuracy" in s and "strong_only_accuracy" not in s

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"sentence": "good"}) + "\n")
    with pytest.raises(Exception, match="bad.jsonl"):
        serve(served["results"], "--inputs", bad, "--out", tmp_path / "b.jsonl")
    assert not (tmp_path / "b.jsonl").exists()
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "good", "label": "maybe"}) + "\n")
    with pytest.raises(SystemExit, match=r"wrong.jsonl: row 0: label 'maybe'"):
        serve(served["results"], "--inputs", wrong, "--out", tmp_path / "c.jsonl")
    with pytest.raises(SystemExit, match="no pair matches"):
        serve(served["results"], "--split", "test", "--seed", "7", "--out", tmp_path / "d.jsonl")


def test_unknown_save_weights_kind_is_refused(tiny_env, tmp_path):
    with pytest.raises(ValueError, match=r"save_weights: unknown kind\(s\) \['strong'\]"):
        run(tiny_overrides(tiny_env, tmp_path, "save_weights=[weak,strong]"))
    assert not list(tmp_path.glob("runs/*/*/metrics.json"))


def test_save_weights_is_not_part_of_run_ids(tiny_env):
    from w2s import runs

    a = compose(tiny_overrides(tiny_env, Path("/tmp/unused")))
    b = compose(tiny_overrides(tiny_env, Path("/tmp/unused"), "save_weights=[weak,ceiling,w2s]"))
    for kind in ("weak", "ceiling"):
        rows = "r"
        assert runs.gt_identity(a, kind, a.strong, 0, rows) == runs.gt_identity(
            b, kind, b.strong, 0, rows
        )
    assert runs.w2s_identity(a, 0, "r", ["w"], None) == runs.w2s_identity(b, 0, "r", ["w"], None)
