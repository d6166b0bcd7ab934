"""Preference pair tasks: readers, wrong-answer draws, drops and splits (w2s.pref.pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from w2s.config import TaskConfig
from w2s.data import make_splits
from w2s.data.tasks import DUPLICATE_REASON, DataError
from w2s.lm.tasks import PROMPT_TOO_LONG, arithmetic
from w2s.pref.pairs import (
    HH_PROMPTS_DIFFER,
    HH_SAME_RESPONSE,
    NO_WRONG_ANSWER,
    PAIR_TOO_LONG,
    PrefTask,
    arithmetic_pairs,
    bigbench_pairs,
    is_preference,
    load_pairs,
    read_hh_pairs,
    read_local_pairs,
    split_pairs,
)

FIXTURES = Path(__file__).parent / "fixtures"
CONF = Path(__file__).parents[1] / "conf" / "task"
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    """One token per whitespace-separated word, with a chat template: lengths are word counts."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "</s>", "<user>", "<assistant>", "what", "is", "2", "+", "3", "?"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="</s>")
    fast.chat_template = TEMPLATE
    return fast


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_json(path: Path, examples: list[dict]) -> Path:
    path.write_text(json.dumps({"name": "hand", "examples": examples}), encoding="utf-8")
    return path


# --- HH-RLHF -------------------------------------------------------------------------------


def test_hh_fixture_split():
    data = read_hh_pairs(FIXTURES / "hh_rlhf.jsonl")
    assert len(data) == 4 and data.ids == ["0", "1", "2", "3"] and data.name == "hh_rlhf"
    assert data.prompts[2] == "\n\nHuman: What is 2+2?\n\nAssistant:"
    assert (data.chosen[2], data.rejected[2]) == ("4.", "5.")
    assert data.prompts[0] == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert data.rejected[0] == "Why would you want to?"
    assert data.answers == [[], [], [], []]


def test_hh_multi_turn_splits_at_last_assistant_turn(tmp_path):
    head = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Add 2 and 3.\n\nAssistant:"
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": head + " 5", "rejected": head + "  6 or 7"}])
    data = read_hh_pairs(path, name="hh")
    assert data.name == "hh" and data.prompts == [head]
    assert (data.chosen, data.rejected) == (["5"], ["6 or 7"])


def test_hh_errors(tmp_path):
    ok = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    bad = {"chosen": "\n\nHuman: x\n\nAssistant: b", "rejected": "\n\nHuman: y\n\nAssistant: c"}
    same = {**ok, "rejected": ok["chosen"]}
    data = read_hh_pairs(_jsonl(tmp_path / "mixed.jsonl", [ok, bad, same, ok]))
    assert data.ids == ["0", "3"] and data.chosen == ["b", "b"]
    assert data.skipped == {HH_PROMPTS_DIFFER: 1, HH_SAME_RESPONSE: 1}
    path = _jsonl(tmp_path / "no_turn.jsonl", [{**ok, "rejected": "\n\nHuman: a"}])
    with pytest.raises(DataError, match="row 0: rejected has no"):
        read_hh_pairs(path)
    path = _jsonl(tmp_path / "cols.jsonl", [{"chosen": ok["chosen"]}])
    with pytest.raises(DataError, match="missing column 'rejected'"):
        read_hh_pairs(path)


# --- local files ---------------------------------------------------------------------------


ROWS = [
    {"id": "a", "prompt": "2+3?", "chosen": "5", "rejected": "6", "answers": ["five"]},
    {"id": "b", "prompt": "Say hi.", "chosen": "Hello!", "rejected": "No.", "answers": []},
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_round_trip(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    df = pd.DataFrame(ROWS)
    if suffix == ".jsonl":
        _jsonl(path, ROWS)
    elif suffix == ".csv":
        df.assign(answers=[json.dumps(a) for a in df["answers"]]).to_csv(path, index=False)
    else:
        df.to_parquet(path)
    data = read_local_pairs(path)
    assert data.name == "pairs" and data.ids == ["a", "b"]
    assert data.prompts == ["2+3?", "Say hi."]
    assert data.chosen == ["5", "Hello!"] and data.rejected == ["6", "No."]  # "5" stays text
    assert data.answers == [["5", "five"], ["Hello!"]] and data.skipped == {}


def test_local_without_answers_or_ids(tmp_path):
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ROWS]
    data = read_local_pairs(_jsonl(tmp_path / "p.jsonl", rows), name="mine")
    assert data.name == "mine" and data.ids == ["0", "1"] and data.answers == [[], []]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rejected": None}, "missing column 'rejected'"),
        ({"chosen": ""}, r"row 1: chosen '' is not a non-empty string"),
        ({"chosen": "No."}, "row 1: chosen and rejected are the same"),
        ({"id": "a"}, "row 1: id 'a' repeats row 0"),
        ({"answers": ["No."]}, "row 1: the rejected response is among the answers"),
        ({"answers": 5}, "row 1: answers must be a list of strings"),
        ({"answers": "five"}, "row 1: answers 'five' is not a JSON list"),
    ],
)
def test_local_errors_name_file_and_row(tmp_path, change, match):
    rows = [dict(ROWS[0]), {**ROWS[1], **change}]
    if change.get("rejected", "") is None:
        rows = [{k: v for k, v in r.items() if k != "rejected"} for r in rows]
    with pytest.raises(DataError, match=rf"bad\.jsonl: .*{match}"):
        read_local_pairs(_jsonl(tmp_path / "bad.jsonl", rows))


# --- BIG-bench -----------------------------------------------------------------------------


def _never_self_paired(data) -> None:
    for c, r, accepted in zip(data.chosen, data.rejected, data.answers, strict=True):
        assert r != c and r not in accepted and c in accepted


@pytest.mark.parametrize("seed", range(5))
def test_bigbench_fixtures_never_self_paired(seed):
    mc = bigbench_pairs(FIXTURES / "bigbench/multiple_choice/task.json", seed=seed)
    _never_self_paired(mc)
    assert mc.ids == ["0", "1", "2", "3"] and mc.skipped == {NO_WRONG_ANSWER: 1}  # "Only one choice here"
    assert mc.chosen == ["4", "Paris", "Pacific", "blue"]
    assert mc.rejected[0] in ("3", "5") and mc.rejected[1] == "Rome"
    gen = bigbench_pairs(FIXTURES / "bigbench/generative/task.json", seed=seed)
    _never_self_paired(gen)
    assert len(gen) == 4 and gen.answers[1] == ["down", "below"]
    assert gen.rejected[1] in ("cold", "right")  # "below" is another example's answer, but accepted
    cs = bigbench_pairs(FIXTURES / "bigbench/choice_set/task.json", seed=seed)
    _never_self_paired(cs)
    assert len(cs) == 6 and cs.name == "choice_set"
    sub = bigbench_pairs(FIXTURES / "bigbench/parent/sub/task.json", seed=seed)
    assert len(sub) == 0 and sub.skipped == {NO_WRONG_ANSWER: 1}  # its own answer is the only one


def test_bigbench_shared_answers_never_paired_with_an_accepted_one(tmp_path):
    path = _task_json(
        tmp_path / "task.json",
        [
            {"input": "q0", "target": "a"},
            {"input": "q1", "target": "a"},
            {"input": "q2", "target": "b"},
            {"input": "q3", "target": ["a", "b"]},  # accepts every answer there is: skipped
            {"input": "q4", "target": ["b", "c"]},
        ],
    )
    for seed in range(20):
        data = bigbench_pairs(path, name="hand", seed=seed)
        _never_self_paired(data)
        assert data.ids == ["0", "1", "2", "4"] and data.skipped == {NO_WRONG_ANSWER: 1}
        assert data.rejected[:2] in (["b", "b"], ["b", "c"], ["c", "b"], ["c", "c"])
        assert data.rejected[2] == "a" and data.rejected[3] == "a"
        assert data.answers == [["a"], ["a"], ["b"], ["b", "c"]]
    assert bigbench_pairs(path, seed=3).rejected == bigbench_pairs(path, seed=3).rejected


# --- arithmetic ----------------------------------------------------------------------------


def test_arithmetic_pairs_near_misses():
    data = arithmetic_pairs("2_digit_addition")
    gen = arithmetic("2_digit_addition")
    assert data.name == "arithmetic_pairs_2_digit_addition" and len(data) == 90 * 90
    assert data.ids == gen.ids and data.prompts == gen.prompts and data.chosen == gen.responses
    assert data.prompts[0].startswith("What is ") and " plus " in data.prompts[0]
    a, b = (int(x) for x in data.prompts[0][len("What is ") : -1].split(" plus "))
    assert data.chosen[0] == str(a + b)
    diff = np.array([int(r) - int(c) for c, r in zip(data.chosen, data.rejected, strict=True)])
    assert set(np.unique(diff)) == {-3, -2, -1, 1, 2, 3}
    assert all(c[-1] != r[-1] for c, r in zip(data.chosen, data.rejected, strict=True))
    assert data.answers == [[c] for c in data.chosen]
    again = arithmetic_pairs("2_digit_addition")
    assert again.rejected == data.rejected and again.ids == data.ids
    assert arithmetic_pairs("2_digit_addition", seed=1).rejected != data.rejected
    with pytest.raises(DataError, match="2_digit_addition"):
        arithmetic_pairs("two_digit_addition")


# --- load_pairs, splits and configs --------------------------------------------------------


def _local(tmp_path: Path, **kw) -> TaskConfig:
    rows = [
        {"prompt": "what is 2 + 3 ?", "chosen": "5", "rejected": "6"},
        {"prompt": "what is 2 + 3 ?", "chosen": "5", "rejected": "7"},  # duplicate prompt
        {"prompt": "what is 3 + 3 + 3 + 3 + 3 + 3 ?", "chosen": "18", "rejected": "17"},  # 17 tok
        {"prompt": "what is 3 ?", "chosen": "3", "rejected": "it is 2 + 1 or so I think"},  # 7 + 10
        {"prompt": "2 + 2 ?", "chosen": "4", "rejected": "5"},
    ]
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    return TaskConfig(name="toy", kind="local_pairs", path=str(path), **{"max_length": 16, **kw})


def test_load_pairs_formats_and_counts_drops(tmp_path, tokenizer):
    task = load_pairs(_local(tmp_path), tmp_path, tokenizer)
    assert isinstance(task, PrefTask) and task.name == "toy" and len(task) == 3
    assert task.ids == ["0", "3", "4"]
    assert task.prompts[0] == "<user> what is 2 + 3 ? </s> <assistant> "
    assert task.data.prompts[0] == "what is 2 + 3 ?"  # raw prompts are kept too
    assert task.dropped == {DUPLICATE_REASON: 1, PROMPT_TOO_LONG: 1}
    dropped = load_pairs(_local(tmp_path, overlong="drop"), tmp_path, tokenizer).dropped
    assert dropped == {DUPLICATE_REASON: 1, PROMPT_TOO_LONG: 1, PAIR_TOO_LONG: 1}
    kept = load_pairs(_local(tmp_path, dedup=False, chat=False), tmp_path, tokenizer)
    assert kept.ids == ["0", "1", "2", "3", "4"] and kept.prompts[0] == "what is 2 + 3 ?"
    prompts, chosen, rejected, answers = split_pairs(task, np.array([2, 0]))
    assert prompts == ["<user> 2 + 2 ? </s> <assistant> ", task.prompts[0]]
    assert (chosen, rejected, answers) == (["4", "5"], ["5", "6"], [[], []])


def test_load_pairs_refusals(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="balance"):
        load_pairs(_local(tmp_path, balance=True), tmp_path, tokenizer)
    with pytest.raises(ValueError, match="overlong"):
        load_pairs(_local(tmp_path, overlong="cut"), tmp_path, tokenizer)
    with pytest.raises(DataError, match="every example was dropped"):
        load_pairs(_local(tmp_path, max_length=4), tmp_path, tokenizer)
    for kind in ("local_pairs", "hh_pairs"):
        with pytest.raises(DataError, match=f"kind {kind} needs task.path"):
            load_pairs(TaskConfig(name="t", kind=kind), tmp_path, tokenizer)
    path = _task_json(
        tmp_path / "task.json", [{"input": "q", "target": "a"}, {"input": " ", "target": "b"}]
    )
    cfg = TaskConfig(name="bb", kind="bigbench_pairs", path=str(path))
    with pytest.raises(DataError, match=r"example 1 \(id '1'\) has an empty prompt"):
        load_pairs(cfg, tmp_path, tokenizer)


def test_load_bigbench_and_hh_pairs(tmp_path, tokenizer):
    cfg = TaskConfig(
        name="mc", kind="bigbench_pairs", path=str(FIXTURES / "bigbench/multiple_choice")
    )
    task = load_pairs(cfg, tmp_path, tokenizer)
    assert len(task) == 4 and task.dropped == {NO_WRONG_ANSWER: 1}
    assert task.prompts[0] == "<user> 2 + 2 = </s> <assistant> "
    cfg = TaskConfig(name="hh", kind="hh_pairs", path=str(FIXTURES / "hh_rlhf.jsonl"), chat=False)
    task = load_pairs(cfg, tmp_path, tokenizer)
    assert len(task) == 4 and task.dropped == {}
    assert task.prompts[2] == "\n\nHuman: What is 2+2?\n\nAssistant:"


def test_config_loads_and_splits(tmp_path, tokenizer):
    raw = OmegaConf.load(CONF / "arithmetic_pairs_2d_add.yaml")
    raw.pop("defaults")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), raw))
    assert is_preference(cfg) and cfg.source == "2_digit_addition"
    task = load_pairs(cfg, tmp_path, tokenizer)
    assert task.name == "arithmetic_pairs_2d_add" and len(task) == 8100 and task.dropped == {}
    splits = make_splits(task, cfg, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"a": 400, "b": 400, "val": 50, "test": 300}
    assert len(np.unique(np.concatenate(list(splits.values())))) == 1150
    again = make_splits(task, cfg, seed=0)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    _, chosen, rejected, answers = split_pairs(task, splits["test"])
    assert all(1 <= abs(int(r) - int(c)) <= 3 for c, r in zip(chosen, rejected, strict=True))
    assert answers == [[c] for c in chosen]
    local = OmegaConf.load(CONF / "local_pairs.yaml")
    assert local.kind == "local_pairs" and OmegaConf.is_missing(local, "path")
    assert not is_preference(TaskConfig(name="g", kind="local_gen"))


def test_arithmetic_pairs_with_other_questions_answers_as_distractors():
    from w2s.pref.pairs import arithmetic_pairs

    near = arithmetic_pairs("2_digit_addition")
    other = arithmetic_pairs("2_digit_addition:other")
    assert other.prompts == near.prompts and other.chosen == near.chosen
    assert all(r != c for r, c in zip(other.rejected, other.chosen, strict=True))
    sums = set(other.chosen)
    assert set(other.rejected) <= sums  # every distractor is some question's right answer
    far = np.mean([abs(int(r) - int(c)) > 3 for r, c in zip(other.rejected, other.chosen,
                                                                strict=True)])
    assert far > 0.9
    with pytest.raises(DataError, match="distractor 'far' unknown"):
        arithmetic_pairs("2_digit_addition:far")


def test_hh_config_reads_a_local_file_in_place_of_the_hub(tmp_path, tokenizer):
    raw = OmegaConf.load(CONF / "hh_pairs.yaml")
    raw.pop("defaults")
    raw.path = str(FIXTURES / "hh_rlhf.jsonl")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), raw))
    assert cfg.source == "Anthropic/hh-rlhf" and is_preference(cfg)
    task = load_pairs(cfg, tmp_path, tokenizer)
    assert len(task) == 4 and task.data.chosen[2] == "4." and task.data.rejected[2] == "5."
