"""LM weak -> ceiling -> w2s on a tiny word task: the w2s runs learn from the weak answers alone.

The weak model is under-trained so its answers to B are mostly wrong; a dsft student then
reproduces those wrong answers (it never saw B's references) while the ceiling learns the
references, which is what "supervised only by the weak model" means.
"""

from __future__ import annotations

import pytest

from analysis.pgr import pgr
from tests.conftest import plain_adam, word_swap
from w2s.lm.metrics import exact_match_rate
from w2s.lm.runs import LMSettings, Split, ceiling_run, w2s_run, weak_run
from w2s.lm.step import KD
from w2s.models import load_lm


def _split(n, seed):
    prompts, responses = word_swap(n, seed)
    return Split(prompts, responses, [[r] for r in responses])


@pytest.fixture(scope="module")
def runs(word_lm):
    d, tok = word_lm
    a, b, test = _split(8, 0), _split(10, 1), _split(10, 1)  # test = B: memorisation is the skill
    train = plain_adam(5, 40)
    s = LMSettings(
        train=train,
        weak_lr=3e-3,
        strong_lr=3e-3,
        max_length=12,
        max_new_tokens=4,
        eos_id=2,
        kd=KD("fkl"),
    )

    def load():  # a fresh model per run: training donates its arrays
        return load_lm(str(d))

    weak = weak_run(load, tok, a, b, test, s)
    ceiling = ceiling_run(load, tok, b, test, s)
    out = {"weak": weak, "ceiling": ceiling, "b": b}
    for loss in ("dsft", "token_kd"):
        out[loss] = w2s_run(load, tok, weak, b, test, s, loss)
    out["filtered"] = w2s_run(load, tok, weak, b, test, s, "dsft", filter_q=0.5)
    return out


def test_ceiling_learns_b_and_weak_does_not(runs):
    assert runs["ceiling"]["test"]["exact_match"] == 1.0
    assert runs["weak"]["test"]["exact_match"] <= 0.3


@pytest.mark.parametrize("loss", ["dsft", "token_kd"])
def test_w2s_follows_the_weak_answers_not_the_references(runs, loss):
    weak_texts = [a[0]["text"] for a in runs["weak"]["b_answers"]]
    assert runs[loss]["b_texts"] == weak_texts
    got = runs[loss]["test"]["texts"]
    assert exact_match_rate(got, [[t] for t in weak_texts]) >= 0.8
    em = runs[loss]["test"]["exact_match"]
    assert em <= runs["weak"]["test"]["exact_match"] + 0.2
    value = pgr(em, runs["weak"]["test"]["exact_match"], runs["ceiling"]["test"]["exact_match"])
    print(f"\n{loss}: exact match {em:.2f}, PGR {value:.2f}")
    assert value < 0.3


def test_filter_keeps_the_most_confident_answers():
    from w2s.lm.runs import most_confident

    answers = [[{"confidence": c}] for c in (-0.5, -0.1, -2.0, -0.1, -0.3)]
    assert most_confident(answers, 0.4).tolist() == [1, 3]
    assert most_confident(answers, 0.5).tolist() == [1, 3, 4]  # ceil(2.5)
    assert most_confident(answers, 1.0).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="filter_q"):
        most_confident(answers, 0.0)


def test_filtered_w2s_trains_on_the_kept_rows(runs, word_lm):
    from w2s.lm.runs import most_confident

    keep = most_confident(runs["weak"]["b_answers"], 0.5)
    assert len(keep) == 5
    kept_texts = [runs["weak"]["b_answers"][i][0]["text"] for i in keep]
    assert runs["filtered"]["b_texts"] == kept_texts
    assert runs["filtered"]["b_kept"].tolist() == keep.tolist()
