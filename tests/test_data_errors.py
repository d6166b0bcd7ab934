"""Bad input fails early with a message naming the file, row or column at fault."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from w2s.config import TaskConfig
from w2s.data import DataError, TaskData, load_task, make_splits, tokenize

FIX = Path(__file__).parent / "fixtures"


def _local(path: Path, **kw) -> TaskData:
    return load_task(TaskConfig(name="mine", kind="local", path=str(path), **kw), FIX)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unknown_kind_lists_supported():
    with pytest.raises(ValueError, match=r"unknown task kind 'imdb'; supported kinds: amazon_pol"):
        load_task(TaskConfig(name="x", kind="imdb"), FIX)


def test_local_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nope.jsonl'} not found")):
        _local(tmp_path / "nope.jsonl")


def test_local_path_unset():
    with pytest.raises(DataError, match="set task.path"):
        load_task(TaskConfig(name="x", kind="local"), FIX)


def test_local_unknown_extension(tmp_path):
    (tmp_path / "d.txt").write_text("text,label\n")
    with pytest.raises(DataError, match=r"d\.txt: unknown extension '\.txt'; use one of \.parquet"):
        _local(tmp_path / "d.txt")


def test_local_missing_column_names_it_and_lists_present(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "y": 1}])
    with pytest.raises(DataError) as err:
        _local(p)
    assert str(err.value) == f"{p}: missing column 'label' (columns present: text, y)"


def test_local_non_integer_label_names_row(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\ngood,1\nbad,neg\n")
    with pytest.raises(DataError, match=re.escape(f"{p}: row 1: label 'neg' is not an integer")):
        _local(p)
    q = _jsonl(tmp_path / "f.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1.5}])
    with pytest.raises(DataError, match=re.escape(f"{q}: row 1: label 1.5 is not an integer")):
        _local(q)
    r = tmp_path / "blank.csv"
    r.write_text("text,label\na,0\nb,\n")
    with pytest.raises(DataError, match=re.escape(f"{r}: row 1: label nan is not an integer")):
        _local(r)


def test_local_label_out_of_range(tmp_path):
    p = _jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": -1}])
    with pytest.raises(DataError, match=re.escape(f"{p}: row 1: label -1 is negative")):
        _local(p)
    q = _jsonl(tmp_path / "e.jsonl", [{"text": "a", "label": 2}, {"text": "b", "label": 3}])
    with pytest.raises(DataError, match=re.escape(f"{q}: row 1: label 3 is out of range 0..2")):
        _local(q, num_labels=3)


def test_local_empty_files(tmp_path):
    for name, content in [("e.jsonl", ""), ("e.csv", "text,label\n"), ("z.csv", "")]:
        p = tmp_path / name
        p.write_text(content)
        with pytest.raises(DataError, match=re.escape(f"{p}: empty file (no rows)")):
            _local(p)
    pq = tmp_path / "e.parquet"
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=int)}).to_parquet(
        pq
    )
    with pytest.raises(DataError, match="e.parquet: empty file"):
        _local(pq)


def test_local_bad_text_and_duplicate_ids(tmp_path):
    p = _jsonl(tmp_path / "t.jsonl", [{"text": "a", "label": 0}, {"text": None, "label": 1}])
    with pytest.raises(DataError, match=re.escape(f"{p}: row 1: text is missing")):
        _local(p)
    q = _jsonl(
        tmp_path / "i.jsonl",
        [{"text": "a", "label": 0, "id": "k"}, {"text": "b", "label": 1, "id": "k"}],
    )
    with pytest.raises(DataError, match=re.escape(f"{q}: row 1: id 'k' repeats row 0")):
        _local(q)
    r = _jsonl(tmp_path / "n.jsonl", [{"text": 5, "label": 0}])
    with pytest.raises(DataError, match=re.escape(f"{r}: row 0: text 5 is not a string")):
        _local(r)


def test_format_missing_column_names_file(tmp_path):
    p = _jsonl(tmp_path / "boolq.jsonl", [{"question": "q", "passage": "p"}])
    with pytest.raises(DataError, match=re.escape(f"{p}: missing column 'answer'")):
        load_task(TaskConfig(name="b", kind="boolq", path=str(p)), FIX)


def test_format_bad_boolean_names_row(tmp_path):
    rows = [
        {"question": "q", "passage": "p", "answer": True},
        {"question": "q", "passage": "p", "answer": "maybe"},
    ]
    p = _jsonl(tmp_path / "boolq.jsonl", rows)
    with pytest.raises(DataError, match=re.escape(f"{p}: row 1: answer 'maybe' is not 0/1")):
        load_task(TaskConfig(name="b", kind="boolq", path=str(p)), FIX)


def test_offline_download_says_to_set_task_path(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(DataError) as err:
        load_task(TaskConfig(name="s", kind="sciq", source="allenai/sciq"), tmp_path)
    msg = str(err.value)
    assert "HF dataset allenai/sciq" in msg and "no network" in msg
    assert "set task.path to a local .parquet, .jsonl or .csv file" in msg


def test_bigbench_missing_file_points_to_fetch(tmp_path):
    cfg = TaskConfig(name="h", kind="bigbench", source="multiemo/hotels_sentence_en")
    want = f"{tmp_path / 'bigbench' / 'multiemo' / 'hotels_sentence_en' / 'task.json'} not found"
    with pytest.raises(FileNotFoundError, match=re.escape(want) + ".*w2s-fetch --only bigbench"):
        load_task(cfg, tmp_path)


def test_bigbench_parent_task_lists_subtasks():
    path = FIX / "bigbench" / "parent" / "task.json"
    with pytest.raises(
        DataError, match=re.escape(f"{path}: no examples; it groups the subtasks sub")
    ):
        load_task(TaskConfig(name="p", kind="bigbench", source="parent"), FIX)


def test_bigbench_bad_example_and_bad_json(tmp_path):
    p = tmp_path / "task.json"
    p.write_text(json.dumps({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}))
    with pytest.raises(DataError, match=re.escape(f"{p}: example 1 has neither 'target_scores'")):
        load_task(TaskConfig(name="b", kind="bigbench", path=str(p)), FIX)
    p.write_text("{not json")
    with pytest.raises(DataError, match=re.escape(f"{p}: not a readable JSON file")):
        load_task(TaskConfig(name="b", kind="bigbench", path=str(p)), FIX)


def test_bigbench_classes_matching_nothing():
    cfg = TaskConfig(name="c", kind="bigbench", source="choice_set", classes=["happy", "sad"])
    path = FIX / "bigbench" / "choice_set" / "task.json"
    with pytest.raises(DataError) as err:
        load_task(cfg, FIX)
    assert str(err.value).startswith(f"{path}: no example's answer is in task.classes")
    assert "'negative' (3)" in str(err.value)


def _toy(n: int) -> TaskData:
    return TaskData("toy", ["t"] * n, np.arange(n) % 2, [str(i) for i in range(n)], 2, ["a", "b"])


def test_too_few_examples_names_task_and_sizes():
    cfg = TaskConfig(name="toy", kind="local", n_a=10, n_b=10, n_val=2, n_test=5)
    with pytest.raises(DataError) as err:
        make_splits(_toy(20), cfg, seed=0)
    assert str(err.value) == (
        "task 'toy': 20 examples available but the splits need 27 "
        "(n_a=10, n_b=10, n_val=2, n_test=5); lower the task's split sizes"
    )


def test_empty_after_filtering_says_what_was_dropped():
    data = _toy(5).subset(np.zeros(5, bool), reason="longer than 64 tokens (task.overlong=drop)")
    cfg = TaskConfig(name="toy", kind="local", n_a=1, n_b=1, n_val=0, n_test=1)
    with pytest.raises(DataError) as err:
        make_splits(data, cfg, seed=0)
    assert str(err.value) == (
        "task 'toy' has no examples left to split (5 examples were dropped before splitting: "
        "5: longer than 64 tokens (task.overlong=drop))"
    )


def test_tokenize_rejects_unknown_policy():
    with pytest.raises(ValueError, match="task.overlong must be one of truncate, drop, not 'cut'"):
        tokenize(["a"], None, 8, "cut")
