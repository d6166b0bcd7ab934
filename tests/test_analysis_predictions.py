"""Reading predictions: chunked reads, other column types, bad files, and id alignment."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.cli import main
from analysis.predictions import PredictionStore, align, read_splits, scan_splits
from analysis.synthetic import make_results

PROBS_TYPE = pa.list_(pa.float64())
LABEL_TYPE = pa.int64()


def _write(run_dir, ids, splits, labels, probs, probs_type=PROBS_TYPE, label_type=LABEL_TYPE):
    run_dir.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "id": pa.array(ids),  # str, or int as some task loaders give
            "split": pa.array(splits, pa.string()),
            "label": pa.array(labels, label_type),
            "probs": pa.array([list(p) for p in probs], probs_type),
        }
    )
    pq.write_table(table, run_dir / "predictions.parquet")
    return str(run_dir)


def test_scan_matches_single_reads_and_isolates_a_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    dirs = []
    for i in range(7):
        n = 5 + i
        splits = rng.choice(["b", "val", "test"], n)  # interleaved splits
        probs = rng.dirichlet(np.ones(2 + i % 3), n)  # different numbers of labels per run
        dirs.append(
            _write(
                tmp_path / f"r{i}",
                [f"x{j}" for j in range(n)],
                splits,
                rng.integers(0, 2, n),
                probs,
            )
        )
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "predictions.parquet").write_bytes(b"PAR1 not really")
    dirs.insert(3, str(tmp_path / "bad"))
    # the pipeline writes float32 probabilities; ids may be integers
    f32 = _write(tmp_path / "f32", [7, 9], ["test", "test"], [0, 1], [[0.9, 0.1], [0.2, 0.8]],
                 pa.list_(pa.float32()), pa.int32())  # fmt: skip
    dirs.append(f32)
    results = dict(scan_splits(dirs, chunk=3))
    assert isinstance(results[str(tmp_path / "bad")], Exception)
    for d in dirs:
        if d.endswith("bad"):
            continue
        single = read_splits(d)
        assert set(results[d]) == set(single)
        for split, preds in single.items():
            got = results[d][split]
            assert got.ids.equals(preds.ids)
            np.testing.assert_array_equal(got.labels, preds.labels)
            np.testing.assert_allclose(got.probs, preds.probs)
    table = pq.read_table(tmp_path / "r2" / "predictions.parquet").to_pandas()
    test_rows = table[table["split"] == "test"]
    np.testing.assert_allclose(results[dirs[2]]["test"].probs, np.stack(test_rows["probs"]))
    assert list(results[dirs[2]]["test"].id_strings()) == list(test_rows["id"])
    f32 = results[f32]["test"]
    np.testing.assert_allclose(f32.probs, [[0.9, 0.1], [0.2, 0.8]], rtol=1e-6)
    assert f32.correct.tolist() == [True, True] and list(f32.id_strings()) == ["7", "9"]
    store = PredictionStore()
    store.prefetch(dirs)
    assert list(store.errors()) == [str(tmp_path / "bad")]
    assert store.get(str(tmp_path / "bad")) is None


def test_align_reorders_and_intersects_ids(tmp_path):
    a = read_splits(
        _write(
            tmp_path / "a",
            ["1", "2", "3"],
            ["test"] * 3,
            [0, 1, 1],
            [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]],
        )
    )
    b = read_splits(
        _write(
            tmp_path / "b",
            ["3", "1", "4"],
            ["test"] * 3,
            [1, 0, 0],
            [[0.2, 0.8], [0.4, 0.6], [0.5, 0.5]],
        )
    )
    a2, b2 = align(a["test"], b["test"])
    assert list(a2.id_strings()) == ["1", "3"] and list(b2.id_strings()) == ["1", "3"]
    np.testing.assert_allclose(b2.probs, [[0.4, 0.6], [0.2, 0.8]])
    c = read_splits(_write(tmp_path / "c", ["1", "3"], ["test"] * 2, [1, 1], [[0.5, 0.5]] * 2))
    with pytest.raises(ValueError, match="gold labels"):
        align(a["test"], c["test"])


def test_cli_with_a_corrupt_prediction_file_and_without_w2s_runs(tmp_path):
    root = make_results(tmp_path / "r", seeds=(0, 1), losses=("xent",), n_test=50)
    w2s_dir = next((root / "runs" / "w2s").iterdir())
    (w2s_dir / "predictions.parquet").write_bytes(b"garbage")
    out = tmp_path / "a"
    assert (
        main([str(root), "--out", str(out), "--no-plots", "--quiet", "--n-resamples", "200"]) == 0
    )
    runs = pd.read_csv(out / "pgr_runs.csv")
    assert runs["agreement"].isna().sum() == 1 and runs["pgr"].notna().all()
    assert "unreadable predictions" in (out / "skipped.md").read_text()
    for d in (root / "runs" / "w2s").iterdir():
        (d / "metrics.json").unlink()
    assert main([str(root), "--out", str(out), "--no-plots", "--quiet"]) == 0
    assert "No finished w2s runs" in (out / "pgr_main.md").read_text()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--quiet"]) == 0
