"""``task.dedup``: identical model inputs are kept once, before splitting, and counted.

Without it a text and its copy can land in different splits (e.g. A and test), so a weak model
would be tested on texts it was trained on. Expected coin flips are written out, as in
``test_data_tasks.py``.
"""

from __future__ import annotations

import json
import logging
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest

from w2s.config import TaskConfig
from w2s.data import (
    CONFLICT_REASON,
    DUPLICATE_REASON,
    SPLITS,
    DataError,
    TaskData,
    load_task,
    make_splits,
)

FIX = Path(__file__).parent / "fixtures"

# id, text, label: c repeats a (same label), d repeats b with another label, f repeats a with
# another label; g and h differ from a only by a trailing space or by case, so they are kept.
ROWS = [
    ("a", "good hotel", 1),
    ("b", "bad room", 0),
    ("c", "good hotel", 1),
    ("d", "bad room", 1),
    ("e", "fine", 1),
    ("f", "good hotel", 0),
    ("g", "good hotel ", 1),
    ("h", "Good hotel", 0),
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIX / name).read_text().splitlines()]


def _load(kind: str, path: Path, **kw) -> TaskData:
    return load_task(TaskConfig(name=kw.pop("name", kind), kind=kind, path=str(path), **kw), FIX)


def _local_file(tmp_path: Path, suffix: str) -> Path:
    df = pd.DataFrame(ROWS, columns=["id", "text", "label"])
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        _jsonl(path, df.to_dict("records"))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_local_keeps_first_copy_and_counts_duplicates(tmp_path, suffix, caplog):
    with caplog.at_level(logging.INFO, logger="w2s.data"):
        d = _load("local", _local_file(tmp_path, suffix), name="mine")
    assert d.ids == ["a", "b", "e", "g", "h"]
    assert d.texts == ["good hotel", "bad room", "fine", "good hotel ", "Good hotel"]
    assert d.labels.tolist() == [1, 0, 1, 1, 0]  # the first copy's label, not a later one's
    assert d.dropped == {DUPLICATE_REASON: 1, CONFLICT_REASON: 2}
    assert (d.n_duplicates, d.n_label_conflicts) == (3, 2)
    assert DUPLICATE_REASON == "duplicate text"
    assert CONFLICT_REASON == "duplicate text with a different label"
    info = [r for r in caplog.records if r.levelno == logging.INFO and "duplicate" in r.message]
    assert len(info) == 1 and "dropped 3 duplicate texts" in info[0].message
    assert "5 of 8 examples left" in info[0].message
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "task mine: 2 duplicate texts have a different label" in (
        warn[0].message
    )


def test_dedup_false_keeps_every_copy(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="w2s.data"):
        d = _load("local", _local_file(tmp_path, ".jsonl"), dedup=False)
    assert d.ids == [r[0] for r in ROWS] and d.texts == [r[1] for r in ROWS]
    assert d.dropped == {} and d.n_duplicates == d.n_label_conflicts == 0
    assert "duplicate" not in caplog.text


def test_dedup_is_on_by_default_and_silent_without_duplicates(tmp_path, caplog):
    assert TaskConfig(name="x", kind="local").dedup is True
    with caplog.at_level(logging.WARNING, logger="w2s.data"):
        d = _load("sciq", FIX / "sciq.jsonl")
    assert len(d) == 6 and d.dropped == {} and d.n_duplicates == 0
    assert caplog.records == []


def _copies_task(tmp_path: Path, n_texts: int = 100, copies: int = 3) -> Path:
    """``copies`` rows of each of ``n_texts`` texts (label fixed by the text), interleaved."""
    rows = [
        {"id": f"r{k}", "text": f"sentence {k % n_texts}", "label": (k % n_texts) % 2}
        for k in range(n_texts * copies)
    ]
    return _jsonl(tmp_path / "copies.jsonl", rows)


def _shared_texts(d: TaskData, splits: dict) -> dict[tuple[str, str], int]:
    sets = {k: {d.texts[i] for i in splits[k]} for k in SPLITS}
    return {(x, y): len(sets[x] & sets[y]) for x, y in combinations(SPLITS, 2)}


@pytest.mark.parametrize("balance", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_text_in_two_splits_with_dedup(tmp_path, seed, balance):
    path = _copies_task(tmp_path)
    sizes = dict(n_a=30, n_b=30, n_val=10, n_test=30, balance=balance)
    d = _load("local", path, **sizes)
    assert len(d) == 100 and d.dropped == {DUPLICATE_REASON: 200}
    splits = make_splits(d, TaskConfig(name="local", kind="local", **sizes), seed)
    assert sum(len(v) for v in splits.values()) == 100
    assert all(n == 0 for n in _shared_texts(d, splits).values())

    raw = _load("local", path, dedup=False, **sizes)  # the leak dedup prevents
    raw_splits = make_splits(raw, TaskConfig(name="local", kind="local", **sizes), seed)
    assert sum(_shared_texts(raw, raw_splits).values()) > 0


def test_split_error_reports_the_duplicates(tmp_path):
    path = _copies_task(tmp_path, n_texts=10, copies=3)
    cfg = TaskConfig(name="toy", kind="local", path=str(path), n_a=10, n_b=10, n_val=0, n_test=5)
    d = load_task(cfg, FIX)
    with pytest.raises(DataError) as err:
        make_splits(d, cfg, seed=0)
    assert str(err.value) == (
        "task 'toy': 10 examples available but the splits need 25 "
        "(n_a=10, n_b=10, n_val=0, n_test=5); lower the task's split sizes "
        "(20 examples were dropped before splitting: 20: duplicate text)"
    )


# -- Burns formats on local files of their schema, with duplicates added --


def test_boolq_duplicates(tmp_path):
    rows = _fixture_rows("boolq.jsonl")
    extra = [
        dict(rows[0]),  # same passage, question and answer: a duplicate
        {**rows[1], "answer": not rows[1]["answer"]},  # same text, other label
        {**rows[2], "passage": "Penguins swim."},  # same question, other passage: kept
    ]
    d = _load("boolq", _jsonl(tmp_path / "boolq.jsonl", rows + extra))
    assert d.ids == ["train/0", "train/1", "train/2", "train/5"]
    assert d.labels.tolist() == [1, 0, 0, 0]
    assert d.dropped == {DUPLICATE_REASON: 1, CONFLICT_REASON: 1}
    assert d.n_duplicates == 2


def test_amazon_polarity_csv_duplicates(tmp_path):
    df = pd.read_csv(FIX / "amazon_polarity.csv")
    extra = pd.DataFrame(
        [
            {"label": 1, "title": "Great kettle", "content": "Boils fast, looks nice."},
            {"label": 1, "title": "Broke in a week", "content": "The handle snapped."},
            {"label": 1, "title": "Great kettle", "content": "Boils fast, looks nice!"},
        ]
    )
    path = tmp_path / "amazon.csv"
    pd.concat([df, extra, extra.iloc[:1]], ignore_index=True).to_csv(path, index=False)
    d = _load("amazon_polarity", path)
    assert d.ids == ["train/0", "train/1", "train/2", "train/5"]
    assert d.texts[-1] == "Great kettle\nBoils fast, looks nice!"
    assert d.dropped == {DUPLICATE_REASON: 2, CONFLICT_REASON: 1}


def test_sciq_duplicate_questions_count_only_identical_pairs(tmp_path):
    """Every question twice: a copy is dropped only where its coin drew the same answer
    (row 10 repeats row 4, "earth"); the other copies pair the question with another answer."""
    rows = _fixture_rows("sciq.jsonl")
    d = _load("sciq", _jsonl(tmp_path / "sciq.jsonl", rows + rows))
    assert d.ids == [f"train/{i}" for i in range(12) if i != 10]
    assert d.dropped == {DUPLICATE_REASON: 1}
    raw = _load("sciq", tmp_path / "sciq.jsonl", dedup=False)
    assert raw.texts[10] == raw.texts[4] == "Q: Which planet is closest to the sun? A: earth"


def test_anthropic_hh_swapped_pairs_conflict(tmp_path):
    """Rows 0-3, then 0-3 with chosen and rejected swapped, then 0-3 again. A swapped row whose
    coin shows the same dialogue as the original has the other label."""
    rows = _fixture_rows("hh_rlhf.jsonl")
    swapped = [{"chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    d = _load("anthropic_hh", _jsonl(tmp_path / "hh.jsonl", rows + swapped + rows))
    assert d.ids == ["train/0", "train/1", "train/2", "train/3", "train/4", "train/9", "train/10"]
    assert d.labels.tolist() == [0, 1, 1, 1, 0, 0, 0]
    assert d.dropped == {DUPLICATE_REASON: 2, CONFLICT_REASON: 3}


def test_cosmos_qa_counts_duplicates_next_to_unlabelled_rows(tmp_path):
    """A question asked four times whose wrong answers are all "No .": every coin came up tails,
    so the four texts are identical; the unlabelled row is dropped for its own reason."""
    rows = _fixture_rows("cosmos_qa.jsonl")
    shut = {
        "context": "The shop was shut.",
        "question": "Was it open ?",
        "answer0": "Yes .",
        "answer1": "No .",
        "answer2": "No .",
        "answer3": "No .",
        "label": 0,
    }
    d = _load("cosmos_qa", _jsonl(tmp_path / "cosmos.jsonl", rows + [shut] * 4))
    assert d.ids == ["train/0", "train/1", "train/2", "train/4"]
    assert d.texts[-1] == "Content: The shop was shut.\n\nQuestion: Was it open ?\n\nAnswer: No ."
    assert d.dropped == {"no valid right or wrong answer (unlabelled)": 1, DUPLICATE_REASON: 3}


def test_bigbench_classes_dedup_after_the_class_filter(tmp_path):
    """A repeated neutral sentence is dropped by task.classes, not counted as a duplicate."""
    ex = [
        ("Nice room.", "positive"),
        ("We arrived.", "neutral"),
        ("Rude staff.", "negative"),
        ("We arrived.", "neutral"),
        ("Nice room.", "positive"),
        ("Rude staff.", "positive"),
        ("Cold food.", "negative"),
    ]
    names = ("negative", "neutral", "positive")
    task = {
        "examples": [{"input": t, "target_scores": {c: int(c == a) for c in names}} for t, a in ex]
    }
    (tmp_path / "task.json").write_text(json.dumps(task))
    d = _load("bigbench", tmp_path / "task.json", classes=["negative", "positive"])
    assert d.ids == ["0", "2", "6"] and d.labels.tolist() == [1, 0, 0]
    assert d.dropped == {
        "answer not in task.classes": 2,
        DUPLICATE_REASON: 1,
        CONFLICT_REASON: 1,
    }
