"""Language-model W2S from the ``w2s`` command on a tiny word task (``task.kind=local_gen``):
weak, ceiling and every w2s loss recorded in the run store, the weak answers stored and
read back as the students' only supervision, reuse, drops counted, and bad input refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose
from w2s.data.tasks import DataError

WORDS = range(3, 10)
N = len(WORDS) ** 2  # every prompt "wA wB w0" over 7 words, answered "wA"; 3 over-long ones too


@pytest.fixture(scope="module")
def lm_env(word_lm, tmp_path_factory):
    """A tiny LM checkpoint with its tokenizer saved beside it, a second one of another
    vocabulary size, and a jsonl task: answer the first word (3 prompts too long for
    max_length=12)."""
    import shutil

    import transformers

    from tests.helpers import save_tiny

    root = tmp_path_factory.mktemp("lm_env")
    d, tok = word_lm
    lm = root / "lm"
    shutil.copytree(d, lm)
    tok.save_pretrained(lm)
    other = root / "lm_vocab64"
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2)
    save_tiny(transformers.LlamaForCausalLM, cfg, other, seed=1)
    tok.save_pretrained(other)
    pairs = [(a, b) for a in WORDS for b in WORDS]
    rows = [{"id": f"r{i}", "prompt": f"w{a} w{b} w0", "response": f"w{a}"}
            for i, (a, b) in enumerate(pairs)]
    rows += [{"id": f"long{i}", "prompt": " ".join(["w5"] * 12), "response": "w1"}
             for i in range(3)]
    data = root / "swap.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"lm": lm, "other": other, "data": data, "root": root}


def _overrides(env, results, *extra):
    return [
        "model@weak=local", "weak.name=tiny-weak-lm", f"weak.path={env['lm']}", "weak.lr=1e-5",
        "model@strong=local", "strong.name=tiny-strong-lm", f"strong.path={env['lm']}",
        "strong.lr=3e-3", "task=local_gen", "task.name=swap", f"task.path={env['data']}",
        "task.n_a=8", "task.n_b=20", "task.n_val=0", "task.n_test=15", "task.max_length=12",
        "task.max_new_tokens=4", "task.chat=false", "task.split_seed=0",
        "train.batch_size=5", "train.epochs=30", "train.warmup_frac=0.0",
        "train.schedule=constant", "train.optimizer=adam", "train.clip_norm=0.0",
        "train.early_stop.runs=[]", "train.progress=false", "train.eval_batch_size=16",
        f"results_dir={results}", f"cache_dir={env['root'] / 'cache'}", "seeds=[0]",
        "loss=dsft", *extra,
    ]


def _run(env, results, *extra):
    from w2s.cli import run

    return run(compose(_overrides(env, results, *extra)))


def _metrics(results, kind):
    out = [json.loads(p.read_text()) for p in (results / "runs" / kind).glob("*/metrics.json")]
    return {m["run_id"]: m for m in out}


@pytest.fixture(scope="module")
def results(lm_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_results")
    _run(lm_env, out)
    return out


def test_runs_are_recorded_and_exact_match_is_recomputable(results, lm_env):
    from w2s.lm.metrics import exact_match

    data = {r["id"]: r for r in map(json.loads, lm_env["data"].read_text().splitlines())}
    for kind in ("weak", "ceiling", "w2s"):
        (m,) = _metrics(results, kind).values()
        assert m["status"] == "done" and m["task_type"] == "generative"
        assert m["dropped"] == {
            "prompt leaves no room for a response within task.max_length": 3}
        pred = pd.read_parquet(results / "runs" / kind / m["run_id"] / "predictions.parquet")
        assert len(pred) == m["n_test"] == 15 and not pred["id"].str.startswith("long").any()
        want = [exact_match(t, [data[i]["response"]]) for t, i in zip(pred.text, pred.id,
                                                                      strict=True)]
        assert pred["correct"].tolist() == want
        assert m["accuracy"] == m["exact_match"] == pytest.approx(np.mean(want))
    (c,) = _metrics(results, "ceiling").values()
    (w,) = _metrics(results, "weak").values()
    assert c["accuracy"] >= 0.5 and w["accuracy"] <= 0.2  # strong lr 3e-3 vs weak lr 1e-5
    (s,) = _metrics(results, "w2s").values()
    assert s["weak_run"] == w["run_id"] and s["loss"] == "dsft"
    assert s["supervisor_accuracy"] == w["accuracy"] and s["n_train"] == 20


def test_weak_generations_are_the_restored_weak_lms_answers(results, lm_env, word_lm):
    from w2s.lm.generations import answer
    from w2s.models import load_lm
    from w2s.train.loop import restore_params

    (w,) = _metrics(results, "weak").values()
    d = results / "runs" / "weak" / w["run_id"]
    gen = pd.read_parquet(d / "generations.parquet")
    b = gen[gen["split"] == "b"]
    assert len(b) == 20 and (gen["split"] == "test").sum() == 15
    lm = restore_params(load_lm(str(lm_env["lm"])), d / "weights")
    again = answer(lm, word_lm[1], b["prompt"].tolist(), max_new_tokens=4, eos_id=2)
    assert [a[0]["text"] for a in again] == b["text"].tolist()
    np.testing.assert_allclose([a[0]["confidence"] for a in again], b["confidence"], atol=1e-5)


def test_dsft_learns_the_stored_weak_answers_not_the_references(lm_env, tmp_path):
    """The weak run's stored answers are replaced by one constant answer: a dsft student
    trained afterwards says that answer to unseen test prompts."""
    _run(lm_env, tmp_path, "kinds=[weak]")
    (w,) = _metrics(tmp_path, "weak").values()
    path = tmp_path / "runs" / "weak" / w["run_id"] / "generations.parquet"
    gen = pd.read_parquet(path)
    gen.loc[gen["split"] == "b", "text"] = "w1 w1"
    gen.to_parquet(path)
    _run(lm_env, tmp_path, "kinds=[w2s]")
    (s,) = _metrics(tmp_path, "w2s").values()
    pred = pd.read_parquet(tmp_path / "runs" / "w2s" / s["run_id"] / "predictions.parquet")
    assert (pred["text"] == "w1 w1").mean() >= 0.8
    assert len(_metrics(tmp_path, "weak")) == 1  # the weak run was reused, not retrained


@pytest.mark.parametrize("extra,name", [
    (("loss=token_kd",), "token_kd_fkl_T1"),
    (("loss=token_kd", "loss.divergence=rkl", "loss.on_policy=0.5"),
     "token_kd_rkl_T1_onpolicy0.5"),
    (("loss=token_kd", "loss.aux=self", "loss.alpha_max=0.5"), "token_kd_fkl_T1+self_constant0.5"),
    (("filter_q=0.5",), "dsft_q0.5"),
])
def test_other_losses_reuse_the_weak_and_ceiling_runs(results, lm_env, extra, name, capsys):
    before = {k: set(_metrics(results, k)) for k in ("weak", "ceiling", "w2s")}
    _run(lm_env, results, *extra)
    assert set(_metrics(results, "weak")) == before["weak"]
    assert set(_metrics(results, "ceiling")) == before["ceiling"]
    new = set(_metrics(results, "w2s")) - before["w2s"]
    assert len(new) == 1
    m = _metrics(results, "w2s")[new.pop()]
    assert m["status"] == "done" and m["loss"] == name
    assert m["n_train"] == (10 if "filter_q=0.5" in extra else 20)
    out = capsys.readouterr().out
    assert out.count("reused") == 2 and "PGR" in out


def test_sampled_dsft_gets_a_weak_run_that_stored_its_samples(lm_env, tmp_path):
    """loss.samples=3 at temperature 1: a weak run of its own (same weights, seed and data as
    the greedy one, so the same test answers) whose B answers are 3 samples a prompt; the
    student learns from all of them."""
    _run(lm_env, tmp_path, "kinds=[weak]")
    (greedy,) = _metrics(tmp_path, "weak")
    _run(lm_env, tmp_path, "kinds=[w2s]", "loss.samples=3", "loss.sample_temperature=1.0")
    weak = _metrics(tmp_path, "weak")
    (rid,) = set(weak) - {greedy}
    gen = pd.read_parquet(tmp_path / "runs" / "weak" / rid / "generations.parquet")
    b = gen[gen["split"] == "b"]
    assert len(b) == 3 * 20 and sorted(b["sample"].unique()) == [0, 1, 2]
    assert b.groupby("id")["text"].nunique().max() > 1  # samples, not one greedy answer
    assert weak[rid]["accuracy"] == weak[greedy]["accuracy"]
    (m,) = _metrics(tmp_path, "w2s").values()
    assert m["weak_run"] == rid and m["loss"] == "dsft_n3_t1"
    assert m["n_train"] == 60 and m["n_train_prompts"] == 20


def test_a_rerun_trains_nothing(results, lm_env, capsys):
    _run(lm_env, results)
    out = capsys.readouterr().out
    assert out.count("reused") == 3


def test_token_kd_refuses_another_vocabulary(lm_env, tmp_path):
    with pytest.raises(ValueError, match="needs the teacher's vocabulary"):
        _run(lm_env, tmp_path, "loss=token_kd", f"weak.path={lm_env['other']}")
    (m,) = _metrics(tmp_path, "w2s").values()
    assert m["status"] == "failed" and "vocabulary" in m["error"]
    assert not (tmp_path / "runs" / "w2s" / m["run_id"] / "predictions.parquet").exists()


def test_overlong_drop_counts_long_references(lm_env, tmp_path, word_lm):
    from w2s.lm.tasks import REFERENCE_TOO_LONG, load_generative

    cfg = compose(_overrides(lm_env, tmp_path, "task.overlong=drop", "task.max_length=6"))
    task = load_generative(cfg.task, tmp_path, word_lm[1])
    # "wA wB w0" (3 tokens) + "wA" + EOS (2) fits in 6; the 12-token prompts do not
    assert task.dropped == {"prompt leaves no room for a response within task.max_length": 3}
    assert len(task) == N
    # at 4 a reference (1 token + EOS) no longer fits after its 3-token prompt: all dropped
    cfg = compose(_overrides(lm_env, tmp_path, "task.overlong=drop", "task.max_length=4"))
    with pytest.raises(DataError, match="every example was dropped") as err:
        load_generative(cfg.task, tmp_path, word_lm[1])
    assert f"'{REFERENCE_TOO_LONG}': {N}" in str(err.value)
    # truncate keeps them (their references are cut in SFT and counted there)
    cfg = compose(_overrides(lm_env, tmp_path, "task.max_length=4"))
    assert len(load_generative(cfg.task, tmp_path, word_lm[1])) == N


@pytest.mark.parametrize("extra,message", [
    (("loss=xent",), "classification loss"),
    (("loss=token_kd", "loss.divergence=hinge"), "unknown divergence"),
    (("loss.on_policy=0.5",), "only for token_kd"),
    (("loss.samples=4",), "temperature > 0"),
    (("train.early_stop.runs=[weak]",), "train.early_stop.runs"),
    (("train.lora.rank=4",), "train.lora.rank"),
])
def test_settings_lm_runs_cannot_use_are_refused(lm_env, tmp_path, extra, message):
    from w2s.checks import check_config

    with pytest.raises(ValueError, match=message):
        check_config(compose(_overrides(lm_env, tmp_path, *extra)))


def test_a_bigbench_task_without_target_is_refused(tmp_path, word_lm):
    from w2s.config import TaskConfig
    from w2s.lm.tasks import load_generative

    path = tmp_path / "mc" / "task.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"examples": [
        {"input": "w1 w2", "target_scores": {"w1": 1, "w2": 0}}]}))
    cfg = TaskConfig(name="mc", kind="bigbench_gen", path=str(path))
    with pytest.raises(DataError, match=r"mc/task.json: no example has a 'target'"):
        load_generative(cfg, tmp_path, word_lm[1])



def test_analysis_scores_generative_runs_by_exact_match(results, tmp_path):
    """w2s-analyze on the LM runs: PGR from exact match, agreement of normalised answers, and the
    weak -> strong cascade deferring on the weak answers' confidence, all recomputed here."""
    from analysis.cli import main
    from w2s.lm.metrics import normalize

    assert main([str(results), "--out", str(tmp_path)]) == 0
    runs = pd.read_csv(tmp_path / "pgr_runs.csv")
    assert len(runs) == len(_metrics(results, "w2s")) >= 1

    def test_rows(kind, rid):
        df = pd.read_parquet(results / "runs" / kind / rid / "predictions.parquet")
        return df.set_index("id")

    (w,) = _metrics(results, "weak").values()
    (c,) = _metrics(results, "ceiling").values()
    weak, ceiling = test_rows("weak", w["run_id"]), test_rows("ceiling", c["run_id"])
    for r in runs.itertuples():
        s = test_rows("w2s", r.w2s_run).loc[weak.index]
        em = {k: d["correct"].mean() for k, d in (("w", weak), ("c", ceiling), ("s", s))}
        assert r.acc_weak == pytest.approx(em["w"]) and r.acc_w2s == pytest.approx(em["s"])
        assert r.pgr == pytest.approx((em["s"] - em["w"]) / (em["c"] - em["w"]))
        same = [normalize(a) == normalize(b) for a, b in zip(weak.text, s.text, strict=True)]
        assert r.agreement == pytest.approx(np.mean(same))
        nll = {k: m["nll"] for k, m in (("w", w), ("c", c),
                                          ("s", _metrics(results, "w2s")[r.w2s_run]))}
        assert r.pgr_nll == pytest.approx((nll["w"] - nll["s"]) / (nll["w"] - nll["c"]))
        assert np.isclose(nll["s"], pd.read_parquet(
            results / "runs" / "w2s" / r.w2s_run / "predictions.parquet")["nll"].mean())
    # the cascade: defer the k least confident weak answers to the ceiling, k = 0..n
    cas = pd.read_csv(tmp_path / "cascade.csv").iloc[0]
    ceil = ceiling.loc[weak.index, "correct"].to_numpy()
    order = np.argsort(weak["confidence"].to_numpy(), kind="stable")
    acc = []
    for k in range(len(order) + 1):
        correct = weak["correct"].to_numpy().copy()
        correct[order[:k]] = ceil[order[:k]]
        acc.append(correct.mean())
    share = np.arange(len(order) + 1) / len(order)
    assert cas.acc_weak == pytest.approx(em["w"]) and cas.acc_strong == pytest.approx(em["c"])
    assert cas.audc == pytest.approx(np.trapezoid(acc, share))
    assert "PGR (NLL)" in (tmp_path / "pgr_main.md").read_text()


def test_an_empty_prompt_is_refused_by_row(tmp_path, word_lm):
    from w2s.config import TaskConfig
    from w2s.lm.tasks import load_generative

    path = tmp_path / "task.json"
    path.write_text(json.dumps({"examples": [{"input": "w1 w2", "target": "w1"},
                                             {"input": "  ", "target": "w2"}]}))
    cfg = TaskConfig(name="t", kind="bigbench_gen", path=str(path))
    with pytest.raises(DataError, match=r"example 1 \(id '1'\) has an empty prompt"):
        load_generative(cfg, tmp_path, word_lm[1])


def test_checkpoint_every_is_skipped_with_a_warning(lm_env, tmp_path, caplog):
    from w2s.lm.experiment import LMExperiment

    LMExperiment(compose(_overrides(lm_env, tmp_path, "train.checkpoint_every=200")))
    assert "train.checkpoint_every=200: language-model runs write no mid-run" in caplog.text
