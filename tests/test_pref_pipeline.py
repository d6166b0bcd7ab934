"""Preference W2S from the ``w2s`` command on a tiny word task (``task.kind=local_pairs``):
reward-model weak / ceiling / w2s runs on the weak RM's preferences, and the dSFT -> dDPO
chain with the weak LM as judge; supervision read back from the weak run only, and reruns
that reuse the judged pairs and the reference log-probs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import compose

GOOD, BAD = range(3, 10), range(10, 17)


@pytest.fixture(scope="module")
def pref_env(word_lm, tmp_path_factory):
    """The tiny word LM with its tokenizer, and pairs: for "wA wB w0" the answer wA (one of the
    GOOD words) is preferred to wB (one of the BAD)."""
    import shutil

    root = tmp_path_factory.mktemp("pref_env")
    d, tok = word_lm
    lm = root / "lm"
    shutil.copytree(d, lm)
    tok.save_pretrained(lm)
    rows = [{"id": f"r{a}_{b}", "prompt": f"w{a} w{b} w0", "chosen": f"w{a}",
             "rejected": f"w{b}"} for a in GOOD for b in BAD]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"lm": lm, "data": data, "root": root}


def _overrides(env, results, *extra):
    return [
        "model@weak=local", "weak.name=tiny-weak", f"weak.path={env['lm']}", "weak.lr=1e-5",
        "model@strong=local", "strong.name=tiny-strong", f"strong.path={env['lm']}",
        "strong.lr=3e-3", "task=local_pairs", "task.name=first_word", f"task.path={env['data']}",
        "task.n_a=8", "task.n_b=16", "task.n_val=0", "task.n_test=12", "task.max_length=8",
        "task.max_new_tokens=3", "task.chat=false", "task.split_seed=0",
        "train.batch_size=4", "train.epochs=12", "train.warmup_frac=0.0",
        "train.schedule=constant", "train.optimizer=adam", "train.clip_norm=0.0",
        "train.early_stop.runs=[]", "train.progress=false", "train.eval_batch_size=16",
        f"results_dir={results}", f"cache_dir={env['root'] / 'cache'}", "seeds=[0]", *extra,
    ]


def _run(env, results, *extra):
    from w2s.cli import run

    return run(compose(_overrides(env, results, *extra)))


def _metrics(results, kind):
    out = [json.loads(p.read_text()) for p in (results / "runs" / kind).glob("*/metrics.json")]
    return {m["run_id"]: m for m in out}


def _one(results, kind, **match):
    got = [m for m in _metrics(results, kind).values()
           if all(m.get(k) == v for k, v in match.items())]
    assert len(got) == 1, (kind, match, [m.get("loss") for m in _metrics(results, kind).values()])
    return got[0]


# -- reward models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rm_results(pref_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm_results")
    _run(pref_env, out, "pref=rm", "loss=xent")
    return out


def test_rm_runs_score_pairwise_accuracy_from_their_rewards(rm_results):
    for kind in ("weak", "ceiling", "w2s"):
        (m,) = _metrics(rm_results, kind).values()
        assert m["status"] == "done" and m["task_type"] == "preference"
        pred = pd.read_parquet(rm_results / "runs" / kind / m["run_id"] / "predictions.parquet")
        assert len(pred) == m["n_test"] == 12
        want = np.where(pred.r_chosen > pred.r_rejected, 1.0,
                        np.where(pred.r_chosen == pred.r_rejected, 0.5, 0.0)).mean()
        assert m["accuracy"] == m["pairwise_accuracy"] == pytest.approx(want)
        np.testing.assert_allclose(pred.prob, 1 / (1 + np.exp(-(pred.r_chosen - pred.r_rejected))))
    (c,) = _metrics(rm_results, "ceiling").values()
    assert c["accuracy"] >= 0.9  # the strong RM learns the good words from 16 pairs
    (w,) = _metrics(rm_results, "weak").values()
    (s,) = _metrics(rm_results, "w2s").values()
    assert s["weak_run"] == w["run_id"] and s["ceiling_run"] == c["run_id"]
    assert s["loss"] == "bt_xent" and s["n_train"] == 16


def test_analysis_reads_rm_runs_as_pairwise_classifiers(rm_results, tmp_path):
    """w2s-analyze on the RM runs: PGR from pairwise accuracy and the agreement of the preferred
    sides, recomputed here from the stored rewards."""
    from analysis.cli import main

    assert main([str(rm_results), "--out", str(tmp_path)]) == 0
    (r,) = pd.read_csv(tmp_path / "pgr_runs.csv").itertuples()

    def wins(kind):
        (m,) = _metrics(rm_results, kind).values()
        df = pd.read_parquet(rm_results / "runs" / kind / m["run_id"] / "predictions.parquet")
        np.testing.assert_allclose(np.stack(df.probs)[:, 1], df.prob)
        return (df.set_index("id").sort_index().r_chosen > df.set_index("id").sort_index()
                .r_rejected).to_numpy()

    w, c, s = wins("weak"), wins("ceiling"), wins("w2s")
    assert r.acc_weak == pytest.approx(w.mean()) and r.acc_w2s == pytest.approx(s.mean())
    assert r.pgr == pytest.approx((s.mean() - w.mean()) / (c.mean() - w.mean()))
    assert r.agreement == pytest.approx(np.mean(w == s))


def test_weak_rm_preferences_are_its_restored_rewards(rm_results, pref_env):
    from w2s.pref.reward import load_reward_model
    from w2s.pref.rm_train import pair_rows, score_pairs
    from w2s.train.loop import restore_params

    (w,) = _metrics(rm_results, "weak").values()
    d = rm_results / "runs" / "weak" / w["run_id"]
    prefs = pd.read_parquet(d / "preferences.parquet")
    b = prefs[prefs["split"] == "b"]
    assert len(b) == 16
    rm = restore_params(load_reward_model(str(pref_env["lm"])), d / "weights")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pref_env["lm"])
    rows_by_id = {r["id"]: r for r in map(json.loads, pref_env["data"].read_text().splitlines())}
    rs = [rows_by_id[i] for i in b["id"]]
    rows = pair_rows(tok, [r["prompt"] for r in rs], [r["chosen"] for r in rs],
                     [r["rejected"] for r in rs], 8, decoder=True, eos_id=None)
    rc, rr = score_pairs(rm, rows)
    np.testing.assert_allclose(b["r_chosen"], rc, atol=1e-5)
    np.testing.assert_allclose(b["prob"], 1 / (1 + np.exp(-(rc - rr))), atol=1e-5)


def test_w2s_rm_learns_the_weak_preferences_not_the_ground_truth(pref_env, tmp_path):
    """With the stored weak preferences flipped to favour every rejected side, the w2s RM
    trained afterwards ranks test pairs the wrong way round."""
    _run(pref_env, tmp_path, "pref=rm", "loss=xent", "kinds=[weak]")
    (w,) = _metrics(tmp_path, "weak").values()
    path = tmp_path / "runs" / "weak" / w["run_id"] / "preferences.parquet"
    prefs = pd.read_parquet(path)
    prefs.loc[prefs["split"] == "b", "prob"] = 0.02
    prefs.to_parquet(path)
    _run(pref_env, tmp_path, "pref=rm", "loss=logconf", "kinds=[w2s]")
    (s,) = _metrics(tmp_path, "w2s").values()
    assert s["loss"] == "bt_logconf" and s["accuracy"] <= 0.2
    assert len(_metrics(tmp_path, "weak")) == 1  # reused, not retrained


# -- dSFT -> dDPO ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dpo_results(pref_env, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_results")
    _run(pref_env, out, "pref=dpo", "loss=dsft", "pref.beta=0.5", "pref.epochs=4")
    return out


def test_the_chain_records_sft_and_dpo_stages(dpo_results):
    (w,) = _metrics(dpo_results, "weak").values()
    sft_c = _one(dpo_results, "ceiling", loss="gt")
    dpo_c = _one(dpo_results, "ceiling", loss="gt_dpo_b0.5")
    dsft = _one(dpo_results, "w2s", loss="dsft")
    ddpo = _one(dpo_results, "w2s", loss="ddpo_lm_dpo_b0.5")
    assert dpo_c["start_run"] == sft_c["run_id"] and ddpo["start_run"] == dsft["run_id"]
    assert ddpo["weak_run"] == w["run_id"] and ddpo["ceiling_run"] == dpo_c["run_id"]
    assert dsft["ceiling_run"] == sft_c["run_id"]
    for m in (sft_c, dpo_c, dsft, ddpo):
        assert (dpo_results / "runs" / m["kind"] / m["run_id"] / "weights").exists() == (
            m in (sft_c, dsft))
        assert m["task_type"] == "generative" and 0 <= m["accuracy"] <= 1
    assert dpo_c["n_pairs"] == 16 and not dpo_c["reference_reused"]
    assert 0 <= ddpo["judge_agreement"] <= 1 and not ddpo["pairs_reused"]


def test_the_judged_pairs_are_the_weak_lms_ranking(dpo_results, pref_env):
    """Every stored judged pair puts first the response the restored weak LM finds likelier
    (mean token log-likelihood), and its margin is that difference; the judge never sees
    the strong policy (its pairs are stored in the weak run before any DPO)."""
    from transformers import AutoTokenizer

    from w2s.models import load_lm
    from w2s.pref.judge import lm_scores
    from w2s.train.loop import restore_params

    (w,) = _metrics(dpo_results, "weak").values()
    d = dpo_results / "runs" / "weak" / w["run_id"]
    (path,) = (d / "judged").glob("*.parquet")
    pairs = pd.read_parquet(path)
    lm = restore_params(load_lm(str(pref_env["lm"])), d / "weights")
    tok = AutoTokenizer.from_pretrained(pref_env["lm"])
    kw = {"max_length": 8, "eos_id": 2}
    s_c = lm_scores(lm, tok, pairs["prompt"].tolist(), pairs["chosen"].tolist(), **kw)
    s_r = lm_scores(lm, tok, pairs["prompt"].tolist(), pairs["rejected"].tolist(), **kw)
    assert (s_c > s_r).all()
    np.testing.assert_allclose(pairs["margin"], s_c - s_r, atol=1e-5)
    truth = {r["id"]: r["chosen"] for r in map(json.loads, pref_env["data"].read_text().splitlines())}
    (ddpo,) = [m for m in _metrics(dpo_results, "w2s").values() if m["loss"].startswith("ddpo")]
    agree = np.mean([truth[i] == c for i, c in zip(pairs["id"], pairs["chosen"], strict=True)])
    assert ddpo["judge_agreement"] == pytest.approx(agree)


def test_a_rerun_reuses_the_judged_pairs_and_the_reference_logprobs(dpo_results, pref_env):
    """Another beta is another DPO run, but its pairs and reference log-probs are read back
    from the weak run and the starting runs; the SFT runs are reused as they are."""
    before = {k: set(_metrics(dpo_results, k)) for k in ("weak", "ceiling", "w2s")}
    _run(pref_env, dpo_results, "pref=dpo", "loss=dsft", "pref.beta=0.25", "pref.epochs=4")
    after = {k: set(_metrics(dpo_results, k)) for k in ("weak", "ceiling", "w2s")}
    assert after["weak"] == before["weak"]
    assert len(after["ceiling"] - before["ceiling"]) == 1 == len(after["w2s"] - before["w2s"])
    dpo_c = _one(dpo_results, "ceiling", loss="gt_dpo_b0.25")
    ddpo = _one(dpo_results, "w2s", loss="ddpo_lm_dpo_b0.25")
    assert dpo_c["reference_reused"] and ddpo["reference_reused"] and ddpo["pairs_reused"]


def test_ddpo_with_a_weak_reward_model_judge(pref_env, tmp_path, capsys):
    _run(pref_env, tmp_path, "pref=dpo", "loss=dsft", "pref.judge=rm", "pref.epochs=1",
         "train.epochs=2")
    assert "[6/6]" in capsys.readouterr().out  # the weak RM fitted once, counted once
    ceilings = _metrics(tmp_path, "ceiling")
    _run(pref_env, tmp_path, "pref=dpo", "loss=dsft", "pref.judge=lm", "pref.epochs=1",
         "train.epochs=2")
    assert _metrics(tmp_path, "ceiling").keys() == ceilings.keys()  # the judge is not its input
    ddpo = _one(tmp_path, "w2s", loss="ddpo_rm_dpo_b0.1")
    weak = _metrics(tmp_path, "weak").values()
    (rm,) = [m for m in weak if (tmp_path / "runs" / "weak" / m["run_id"] /
                                 "preferences.parquet").exists()]
    assert rm["task_type"] == "preference" and ddpo["n_pairs"] >= 1


def test_ai_feedback_pairs_are_the_judges_best_and_worst_samples(pref_env, tmp_path):
    _run(pref_env, tmp_path, "pref=dpo", "loss=dsft", "pref.samples=4",
         "pref.sample_temperature=1.5", "pref.epochs=1", "train.epochs=2")
    (w,) = _metrics(tmp_path, "weak").values()
    (path,) = (tmp_path / "runs" / "weak" / w["run_id"] / "judged").glob("*.parquet")
    pairs = pd.read_parquet(path)
    assert len(pairs) >= 1 and (pairs["chosen"] != pairs["rejected"]).all()
    assert (pairs["margin"] > 0).all()
    ddpo = _one(tmp_path, "w2s", loss="ddpo_lm_dpo_b0.1_n4_t1.5")
    assert ddpo["n_pairs"] == len(pairs) and ddpo["judge_agreement"] is None


@pytest.mark.parametrize("extra,message", [
    (("pref=dpo", "loss=token_kd"), "use loss=dsft"),
    (("pref=rm", "loss=kd"), "reward models train with"),
    (("pref=rm", "pref.judge=gpt"), "pref.judge='gpt' unknown"),
    (("pref=dpo", "loss=dsft", "pref.beta=0"), "beta > 0"),
    (("pref=rm", "loss=xent", "train.lora.rank=4"), "not implemented for reward-model runs"),
    (("pref=dpo", "loss=dsft", "kinds=[w2s]"), "runs the whole chain"),
])
def test_bad_settings_are_refused_before_training(pref_env, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        _run(pref_env, tmp_path, *extra)
    assert not (tmp_path / "runs").exists()
