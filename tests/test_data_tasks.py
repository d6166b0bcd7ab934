"""Loaders turn each source schema into the exact texts, labels and ids the paper formats call for.

Expected coin flips are written out (not recomputed), so any change to the data a task produces
shows up here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from w2s.config import TaskConfig
from w2s.data import TaskData, load_task, supported_kinds
from w2s.data import hf as hf_mod

FIX = Path(__file__).parent / "fixtures"


def _load(kind: str, path: Path | str | None = None, cache: Path = FIX, **kw) -> TaskData:
    cfg = TaskConfig(name=kw.pop("name", kind), kind=kind, path=str(path) if path else None, **kw)
    return load_task(cfg, cache)


def test_registry_lists_every_kind():
    assert supported_kinds() == [
        "amazon_polarity",
        "anthropic_hh",
        "bigbench",
        "boolq",
        "cosmos_qa",
        "local",
        "sciq",
    ]


def test_sciq_pairs_question_with_answer_or_distractor():
    d = _load("sciq", FIX / "sciq.jsonl")
    assert d.texts == [
        "Q: What gas do plants absorb from the air? A: nitrogen",
        "Q: What is the SI unit of force? A: newton",
        "Q: Which organelle makes most of a cell's ATP? A: mitochondria",
        "Q: What is the common name of H2O? A: water",
        "Q: Which planet is closest to the sun? A: earth",
        "Q: What do bees make? A: silk",
    ]
    assert d.labels.tolist() == [0, 1, 1, 1, 0, 0]
    assert d.labels.dtype == np.int64
    assert d.ids == [f"train/{i}" for i in range(6)]
    assert (d.num_labels, d.label_names) == (2, ["incorrect", "correct"])


def test_boolq_passage_then_question():
    d = _load("boolq", FIX / "boolq.jsonl")
    assert d.texts[0] == (
        "Passage: The Sun is the star at the center of the Solar System.\n"
        "Question: is the sun a star"
    )
    assert d.labels.tolist() == [1, 0, 0]
    assert d.label_names == ["false", "true"]


def test_cosmos_qa_drops_unlabelled_rows():
    d = _load("cosmos_qa", FIX / "cosmos_qa.jsonl")
    assert d.texts == [
        "Content: I forgot my umbrella and it rained all day.\n\n"
        "Question: How did I probably feel?\n\nAnswer: Sleepy .",
        "Content: The bakery sold out of bread by noon.\n\n"
        "Question: Why might the bread sell out ?\n\nAnswer: It was popular .",
        "Content: She studied every night for a month.\n\n"
        "Question: What happened at the exam ?\n\nAnswer: She did well .",
    ]
    assert d.labels.tolist() == [0, 1, 1]
    assert d.ids == ["train/0", "train/1", "train/2"]
    assert d.dropped == {"no valid right or wrong answer (unlabelled)": 1}


def test_amazon_polarity_title_newline_content_from_csv():
    d = _load("amazon_polarity", FIX / "amazon_polarity.csv")
    assert d.texts == [
        "Great kettle\nBoils fast, looks nice.",
        "Broke in a week\nThe handle snapped.",
        'Five stars\nWould buy again, "really" good.',
    ]
    assert d.labels.tolist() == [1, 0, 1]
    assert d.label_names == ["negative", "positive"]


def test_anthropic_hh_chosen_is_label_one():
    d = _load("anthropic_hh", FIX / "hh_rlhf.jsonl")
    rows = pd.read_json(FIX / "hh_rlhf.jsonl", lines=True)
    assert d.labels.tolist() == [0, 1, 1, 1]
    for text, label, (_, row) in zip(d.texts, d.labels, rows.iterrows(), strict=True):
        assert text == (row.chosen if label == 1 else row.rejected)


def test_formats_read_parquet_and_are_identical_across_loads(tmp_path):
    pd.read_json(FIX / "sciq.jsonl", lines=True).to_parquet(tmp_path / "sciq.parquet")
    a = _load("sciq", tmp_path / "sciq.parquet")
    b = _load("sciq", FIX / "sciq.jsonl")
    assert a.texts == b.texts and a.labels.tolist() == b.labels.tolist() and a.ids == b.ids


def test_download_falls_back_to_the_parquet_conversion(tmp_path, monkeypatch):
    """Main branch with only a loading script -> refs/convert/parquet is used; shards are
    concatenated in name order."""
    rows = pd.read_json(FIX / "boolq.jsonl", lines=True)
    calls = []

    def fake_snapshot(repo_id, repo_type, revision, allow_patterns, cache_dir):
        calls.append((repo_id, repo_type, revision))
        root = tmp_path / (revision or "main").replace("/", "_")
        root.mkdir(exist_ok=True)
        if revision is None:
            (root / "boolq.py").write_text("# loading script")
        else:
            (root / "default" / "train").mkdir(parents=True)
            rows.iloc[:2].to_parquet(root / "default" / "train" / "0000.parquet")
            rows.iloc[2:].to_parquet(root / "default" / "train" / "0001.parquet")
            (root / "default" / "validation").mkdir()
            rows.to_parquet(root / "default" / "validation" / "0000.parquet")
        return str(root)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot)
    d = _load("boolq", cache=tmp_path)
    assert calls == [
        ("google/boolq", "dataset", None),
        ("google/boolq", "dataset", hf_mod.CONVERTED),
    ]
    assert d.labels.tolist() == [1, 0, 0] and d.ids == ["train/0", "train/1", "train/2"]


def test_split_patterns_match_hub_layouts():
    files = [
        "data/train-00000-of-00001.parquet",
        "amazon_polarity/train-00001-of-00004.parquet",
        "default/train/0000.parquet",
        "harmless-base/train.jsonl.gz",
        "red-team-attempts/red_team_attempts.jsonl.gz",
        "data/validation-00000-of-00001.parquet",
        "harmless-base/test.jsonl.gz",
    ]
    import fnmatch

    pats = hf_mod.split_patterns("train")
    hits = [f for f in files if any(fnmatch.fnmatch(f, p) for p in pats)]
    assert hits == files[:4]


def test_bigbench_classes_mode_keeps_listed_answers():
    d = _load("bigbench", source="choice_set", classes=["negative", "positive"])
    assert d.texts == [
        "The room was lovely.",
        "The staff were rude.",
        "Breakfast was superb.",
        "The bed was broken.",
        "Dirty towels.",
    ]
    assert d.labels.tolist() == [1, 0, 1, 0, 0]
    assert d.ids == ["0", "1", "3", "4", "5"]
    assert d.label_names == ["negative", "positive"]
    assert d.dropped == {"answer not in task.classes": 1}


def test_bigbench_shared_choices_become_classes_in_first_example_order():
    d = _load("bigbench", source="choice_set")
    assert d.label_names == ["neutral", "positive", "negative"]
    assert d.labels.tolist() == [1, 2, 0, 1, 2, 2]
    assert d.texts[2] == "We arrived on Monday."  # input only: no task_prefix


def test_bigbench_multiple_choice_becomes_right_or_wrong_pairs():
    d = _load("bigbench", source="multiple_choice")
    assert d.texts == [
        "2 + 2 =\nAnswer: 5",
        "Capital of France?\nAnswer: Paris",
        "Largest ocean?\nAnswer: Pacific",
        "Colour of the sky?\nAnswer: blue",
    ]
    assert d.labels.tolist() == [0, 1, 1, 1]
    assert d.label_names == ["incorrect", "correct"]
    assert d.dropped == {"no wrong answer to pair with": 1}  # the single-choice example


def test_bigbench_target_only_draws_wrong_answers_from_other_targets():
    d = _load("bigbench", source="generative")
    # "below" is an accepted target of "up", so it is never drawn as its wrong answer
    assert d.texts == [
        "Opposite of hot:\nAnswer: below",
        "Opposite of up:\nAnswer: down",
        "Opposite of left:\nAnswer: right",
        "Opposite of under:\nAnswer: below",
    ]
    assert d.labels.tolist() == [0, 1, 1, 1]


def test_bigbench_path_may_name_the_file_or_its_folder():
    by_file = _load("bigbench", FIX / "bigbench" / "choice_set" / "task.json")
    by_dir = _load("bigbench", FIX / "bigbench" / "choice_set", cache=Path("/nonexistent"))
    assert by_file.texts == by_dir.texts and by_file.label_names == by_dir.label_names


def test_local_jsonl_csv_parquet_agree(tmp_path):
    rows = [
        {"text": "good", "label": 1, "id": "x1"},
        {"text": "bad", "label": 0, "id": "x2"},
        {"text": "meh", "label": 2, "id": "x3"},
    ]
    df = pd.DataFrame(rows)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    df.to_csv(tmp_path / "d.csv", index=False)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        d = _load("local", tmp_path / name)
        assert d.texts == ["good", "bad", "meh"]
        assert d.labels.tolist() == [1, 0, 2] and d.labels.dtype == np.int64
        assert d.ids == ["x1", "x2", "x3"]
        assert (d.num_labels, d.label_names) == (3, ["0", "1", "2"])


def test_local_num_labels_ids_and_class_names(tmp_path):
    pd.DataFrame({"text": ["a", "b"], "label": [0, 0]}).to_csv(tmp_path / "d.csv", index=False)
    d = _load("local", tmp_path / "d.csv")
    assert d.num_labels == 2 and d.ids == ["0", "1"]  # at least 2; ids are row numbers
    assert _load("local", tmp_path / "d.csv", num_labels=4).num_labels == 4
    named = _load("local", tmp_path / "d.csv", classes=["no", "yes"])
    assert named.label_names == ["no", "yes"]


def test_subset_by_mask_or_indices_records_why():
    d = TaskData("t", ["a", "b", "c"], np.array([0, 1, 0]), ["i", "j", "k"], 2, ["n", "p"])
    m = d.subset(np.array([True, False, True]), reason="too long")
    assert (m.texts, m.labels.tolist(), m.ids) == (["a", "c"], [0, 0], ["i", "k"])
    assert m.dropped == {"too long": 1}
    ix = m.subset([1, 0])
    assert ix.texts == ["c", "a"] and ix.dropped == {"too long": 1}
    assert d.class_counts().tolist() == [2, 1]


def test_taskdata_rejects_inconsistent_fields():
    with pytest.raises(ValueError, match="not unique"):
        TaskData("t", ["a", "b"], np.array([0, 1]), ["i", "i"], 2, ["n", "p"])
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        TaskData("t", ["a"], np.array([2]), ["i"], 2, ["n", "p"])


@pytest.mark.parametrize(
    "name",
    [
        "sciq",
        "boolq",
        "cosmos_qa",
        "amazon_polarity",
        "anthropic_hh",
        "hotels_sentiment",
        "local",
    ],
)
def test_task_yaml_fits_the_schema(name):
    from omegaconf import OmegaConf

    raw = OmegaConf.load(Path(__file__).parents[1] / "conf" / "task" / f"{name}.yaml")
    assert list(raw.pop("defaults")) == ["task_schema", "_self_"]
    cfg = OmegaConf.merge(OmegaConf.structured(TaskConfig), raw)  # unknown key / bad type: error
    assert cfg.name == name and cfg.kind in supported_kinds()
    if cfg.kind not in ("local", "bigbench"):
        assert cfg.source and cfg.n_a == cfg.n_b > 0
    if name == "hotels_sentiment":
        assert (cfg.source, list(cfg.classes), cfg.max_length) == (
            "multiemo/hotels_sentence_en",
            ["negative", "positive"],
            64,
        )
        assert (cfg.n_a, cfg.n_b, cfg.n_val, cfg.n_test) == (1000, 1000, 200, 1000)
