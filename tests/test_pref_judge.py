"""The weak judge: the LM judge's scores are the weak LM's own mean token log-likelihoods
(checked against transformers' PyTorch model), and pairs are ordered, filtered and picked
from samples as documented."""

from __future__ import annotations

import numpy as np
import pytest

from w2s.pref.judge import best_and_worst, lm_scores, order_pairs


def test_lm_judge_scores_are_mean_token_loglikelihoods_under_torch(word_lm):
    import torch
    import transformers

    from w2s.models import load_lm

    d, tok = word_lm
    prompts = ["w3 w4 w0", "w5 w6 w7 w0", "w8 w0"]
    responses = ["w3", "w6 w5", "w9 w9 w9"]
    got = lm_scores(load_lm(str(d)), tok, prompts, responses, max_length=12, eos_id=2)
    ref = transformers.LlamaForCausalLM.from_pretrained(d).eval()
    want = []
    for p, r in zip(prompts, responses, strict=True):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        r_ids = [*tok(r, add_special_tokens=False)["input_ids"], 2]
        ids = torch.tensor([p_ids + r_ids])
        with torch.no_grad():
            logp = torch.log_softmax(ref(ids).logits[0].double(), -1)
        lp = [logp[len(p_ids) - 1 + k, t].item() for k, t in enumerate(r_ids)]
        want.append(np.mean(lp))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_order_pairs_puts_the_higher_score_first_and_drops_ties_and_small_margins():
    frame = order_pairs(["a", "b", "c", "d"], ["p"] * 4, ["x1", "x2", "x3", "x4"],
                        ["y1", "y2", "y3", "y4"], [0.0, -1.0, 2.0, 1.0], [1.0, -3.0, 2.0, 0.9],
                        min_margin=0.5)
    assert frame["id"].tolist() == ["a", "b"]  # c ties, d's margin 0.1 < 0.5
    assert frame["chosen"].tolist() == ["y1", "x2"]
    assert frame["rejected"].tolist() == ["x1", "y2"]
    np.testing.assert_allclose(frame["margin"], [1.0, 2.0])


def test_best_and_worst_of_samples():
    frame = best_and_worst(
        ["a", "b", "c"], ["p", "q", "r"],
        [["s1", "s2", "s3"], ["same", "same"], ["t1", "t2"]],
        [np.array([0.5, -2.0, 1.5]), np.array([0.0, 1.0]), np.array([0.2, 0.2])],
    )
    # b's samples are one text; c's two texts tie
    assert frame.to_dict("records") == [
        {"id": "a", "prompt": "p", "chosen": "s3", "rejected": "s2", "margin": pytest.approx(3.5)}]
