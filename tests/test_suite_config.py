"""The task suite's config: its sweep names task configs that compose, each a binary BIG-bench
task with its own name, and the suite's split sizes and convergence settings reach every task."""

from pathlib import Path

import yaml

from tests.conftest import compose
from w2s.cli import CONF_DIR


def _sweep_tasks() -> list[str]:
    suite = yaml.safe_load((Path(CONF_DIR) / "experiment" / "suite.yaml").read_text())
    return suite["hydra"]["sweeper"]["params"]["task"].split(",")


def test_suite_sweeps_at_least_ten_distinct_bigbench_tasks():
    tasks = _sweep_tasks()
    assert len(tasks) >= 10 and len(set(tasks)) == len(tasks)
    names, sources = set(), set()
    for t in tasks:
        cfg = compose(["+experiment=suite", f"task={t}"])
        assert cfg.task.kind == "bigbench" and len(cfg.task.classes) == 2, t
        # the suite's trimmed sizes win over the task config's own (500, 500, 200, 800; 128)
        sizes = (cfg.task.n_a, cfg.task.n_b, cfg.task.n_val, cfg.task.n_test, cfg.task.max_length)
        assert sizes == (400, 400, 100, 400, 64), t
        assert cfg.task.balance and cfg.seeds == [0, 1, 2]
        assert list(cfg.train.early_stop.runs) == ["weak", "ceiling"]
        names.add(cfg.task.name)
        sources.add(cfg.task.source)
    assert len(names) == len(sources) == len(tasks)
