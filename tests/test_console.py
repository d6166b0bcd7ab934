"""The console of a ``w2s`` command: quiet by default (bar, one line per run, warnings, table),
INFO logs with ``verbose=true``, INFO always in the job's log file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose, tiny_overrides

RUN_LINE = re.compile(
    r"^\[(\d+)/(\d+)\] (\S+)\s+(\S+)\s+seed (\d+)\s+acc (\d\.\d{4})\s+(reused|\d+\.\d s)"
    r"(?:  (\d+) steps(?: \((val loss stopped falling|the max_epochs budget); kept step (\d+)\))?)?$"
)
CONFLICT = "duplicate texts have a different label"  # the dedup warning of w2s.data.tasks


def screen(out: str) -> list[str]:
    """What a terminal shows: of each line only what was written after its last ``\\r``."""
    return [line.split("\r")[-1].rstrip() for line in out.split("\n")]


def cli(overrides: list[str]) -> list[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "w2s.cli", *overrides], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    out = proc.stdout.decode()  # not text=True: universal newlines would turn \r into \n
    assert proc.returncode == 0, out[-4000:]
    return screen(out)


def run_lines(lines: list[str]) -> list[re.Match]:
    return [m for m in map(RUN_LINE.match, lines) if m]


def finished_runs(results: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(results.glob("runs/*/*/metrics.json")):
        m = json.loads(f.read_text())
        out[m["kind"]] = m
    return out


@pytest.fixture(scope="module")
def consoles(tiny_env, tmp_path_factory):
    """A tiny experiment trained with the default console, then run again with verbose=true.

    Its task has one duplicate text with the other label: dedup's real WARNING path. The
    strong model is the weak one's architecture and every eval batch has one shape, so the
    run compiles two train steps and one predict: the console is under test, not the models.
    """
    root = tmp_path_factory.mktemp("console")
    rows = tiny_env["data"].read_text().splitlines()
    first = json.loads(rows[0])
    clash = {"id": "clash", "text": first["text"], "label": 1 - first["label"]}
    data = root / "toy_clash.jsonl"
    data.write_text("\n".join([*rows, json.dumps(clash)]) + "\n")
    results = root / "results"
    replaced = ("train.progress=false", f"task.path={tiny_env['data']}",
                f"strong.path={tiny_env['strong']}")
    overrides = [o for o in tiny_overrides(tiny_env, results, f"task.path={data}",
                                           f"strong.path={tiny_env['weak']}",
                                           "train.eval_batch_size=40")
                 if o not in replaced]
    return {
        "results": results,
        "trained": cli(overrides),
        "verbose_rerun": cli([*overrides, "verbose=true"]),
    }


def test_default_console_is_one_line_per_run(consoles):
    lines = consoles["trained"]
    noisy = [x for x in lines if "INFO" in x or re.search("absl|orbax", x, re.IGNORECASE)]
    assert not noisy, noisy
    assert not [x for x in lines if "it/s" in x or "%|" in x], "a progress bar was left behind"
    found = run_lines(lines)
    runs = finished_runs(consoles["results"])
    assert [m[3] for m in found] == ["weak", "ceiling", "w2s"]
    assert [(int(m[1]), int(m[2])) for m in found] == [(1, 3), (2, 3), (3, 3)]
    for m in found:
        record = runs[m[3]]
        model = record["weak_model"] if m[3] == "weak" else record["strong_model"]
        assert (m[4], int(m[5])) == (model, record["seed"])
        assert m[6] == f"{record['accuracy']:.4f}"
        assert m[7] == f"{record['train_seconds']:.1f} s"
        assert int(m[8]) == record["steps"]
        if record["early_stop"]:  # weak and ceiling runs stop on their val loss by default
            stopped = record["stopped_at"] is not None
            assert m[9] == ("val loss stopped falling" if stopped else "the max_epochs budget")
            assert int(m[10]) == record["selected_step"]
        else:
            assert m[9] is None
    assert any("toy:" in x for x in lines) and any(x.lstrip().startswith("mean") for x in lines)


def test_warnings_always_show(consoles):
    for lines in (consoles["trained"], consoles["verbose_rerun"]):
        assert [x for x in lines if "WARNING" in x and CONFLICT in x], lines


def test_rerun_reuses_and_verbose_shows_info(consoles):
    lines = consoles["verbose_rerun"]
    found = run_lines(lines)
    runs = finished_runs(consoles["results"])
    assert [(m[3], m[6], m[7]) for m in found] == [
        (k, f"{runs[k]['accuracy']:.4f}", "reused") for k in ("weak", "ceiling", "w2s")
    ]  # verbose is not part of any run id: the same runs are found
    assert any("[w2s][INFO]" in x and "already finished: reused" in x for x in lines)
    assert any("[transformers" in x and "[INFO]" in x for x in lines)  # routed through logging


def test_log_file_keeps_info(consoles):
    logs = sorted((consoles["results"] / "logs").glob("*/*.log"))
    assert len(logs) == 2
    first = logs[0].read_text()
    assert "[absl][INFO]" in first and "[w2s.data][INFO]" in first and CONFLICT in first


def paths(root: Path) -> dict:
    """tiny_env's keys, for configs that are only composed (nothing is read)."""
    return {k: root / k for k in ("weak", "strong", "data", "root")}


@pytest.mark.parametrize("extra, n", [
    ([], 3),
    (["seeds=[0,1]", "s2s_rounds=2"], 2 * (1 + 1 + 3)),
    (["kinds=[ceiling]", "seeds=[0,1,2]"], 3),
    (["kinds=[w2s]", "extra_weak=[{name:b,path:x}]"], 2 + 1),  # weak runs supervise w2s
    (["kinds=[weak]", "extra_weak=[{name:b,path:x}]"], 2),
    (["task=local_pairs", "task.path=x", "pref=dpo", "seeds=[0,1]"], 2 * 5),  # + DPO stage
    (["task=local_pairs", "task.path=x", "pref=dpo", "pref.judge=rm"], 6),  # + the weak RM
    (["task=local_pairs", "task.path=x", "pref=rm"], 3),
])
def test_planned_runs(tmp_path, extra, n):
    from w2s.console import planned_runs

    assert planned_runs(compose(tiny_overrides(paths(tmp_path), tmp_path, *extra))) == n


def test_s2s_rounds_are_named(tmp_path, capsys):
    from w2s.console import Console

    console = Console(compose(tiny_overrides(paths(tmp_path), tmp_path, "s2s_rounds=1")))
    record = {"kind": "w2s", "weak_model": "tiny-weak", "strong_model": "tiny-strong",
              "loss": "xent_s2s1", "seed": 0, "accuracy": 0.75, "train_seconds": 1.26,
              "steps": 20, "early_stop": False, "stopped_at": None}
    console.finished(record)
    console.reused(record)
    stopped = {**record, "kind": "ceiling", "loss": "gt", "early_stop": True, "stopped_at": 30,
               "selected_step": 20}
    console.finished(stopped)
    console.finished({**stopped, "stopped_at": None, "selected_step": 60})
    assert capsys.readouterr().out.splitlines() == [
        "[1/4] s2s1    tiny-strong  seed 0  acc 0.7500  1.3 s  20 steps",
        "[2/4] s2s1    tiny-strong  seed 0  acc 0.7500  reused",
        "[3/4] ceiling tiny-strong  seed 0  acc 0.7500  1.3 s  20 steps "
        "(val loss stopped falling; kept step 20)",
        "[4/4] ceiling tiny-strong  seed 0  acc 0.7500  1.3 s  20 steps "
        "(the max_epochs budget; kept step 60)",
    ]


def test_configure_logging_raises_only_console_handlers(tmp_path):
    import io
    import logging

    from transformers.utils import logging as hf_logging

    from w2s.console import configure_logging

    root = logging.getLogger()
    console, other = logging.StreamHandler(sys.stdout), logging.StreamHandler(io.StringIO())
    file = logging.FileHandler(tmp_path / "job.log")
    handlers = [console, other, file]
    for h in handlers:
        h.setLevel(logging.INFO)
        root.addHandler(h)
    try:
        configure_logging(False)
        assert [h.level for h in handlers] == [logging.WARNING, logging.INFO, logging.INFO]
        assert hf_logging.get_logger("transformers").propagate
        configure_logging(True)
        assert console.level == logging.INFO
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        hf_logging.set_verbosity_warning()
