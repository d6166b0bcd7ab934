"""Experiment tracking, read back by independent readers: TensorBoard's own event-file loader
and accumulator (which check every record's crc), MLflow's client, and W&B's offline record
log decoded with W&B's own protobuf schema.

- crc32c against published vectors, and the masked crc against TensorBoard's implementation;
- scalars and text written by the pure-Python writer read back exactly (tags, steps, float32);
- an end-to-end tiny run: one event file per run whose train/loss per step averages to the
  run's loss_history, whose final scalars are metrics.json's, whose val/score is the recorded
  eval curve and whose train/lr is the schedule's closed form; side-by-side seeds get their
  own runs; a failed run keeps its curve; the log node never changes a run id;
- W&B and MLflow in their offline modes, when those packages are installed (CI has neither).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import compose, tiny_overrides
from w2s import tracking

# -- crc32c and the writer ---------------------------------------------------------------------


def test_crc32c_test_vectors():
    assert tracking.crc32c(b"123456789") == 0xE3069283
    assert tracking.crc32c(b"") == 0
    # RFC 3720 (iSCSI) B.4
    assert tracking.crc32c(bytes(32)) == 0x8A9136AA
    assert tracking.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tracking.crc32c(bytes(range(32))) == 0x46DD794E
    assert tracking.crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C
    # continuing a crc is the crc of the concatenation
    assert tracking.crc32c(b"56789", tracking.crc32c(b"1234")) == 0xE3069283


def test_masked_crc_matches_tensorboards():
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 8, 9, 255, 4096):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tracking.masked_crc32c(data) == masked_crc32c(data)


def _accumulator(logdir: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(logdir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _records(path: Path) -> list[bytes]:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    return list(RawEventFileLoader(str(path)).Load())


def test_scalars_read_back_exactly(tmp_path):
    rng = np.random.default_rng(1)
    tags = ["train/loss", "train/lr", "val/score", "final/accuracy"]
    written: dict[str, list[tuple[int, float]]] = {t: [] for t in tags}
    w = tracking.EventWriter(tmp_path)
    steps = [1, 2, 3, 10, 11, 1000, 2**40]  # a many-byte varint too
    for step in steps:
        values = {t: float(rng.normal() * 10.0 ** rng.integers(-8, 8)) for t in tags[: 1 + step % 4]}
        w.scalars(step, values, wall_time=1.5e9 + step)
        for t, v in values.items():
            written[t].append((step, v))
    w.text(7, "config", "```json\n{\"a\": 1}\n```")
    w.close()

    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert w.path == path
    t, host, pid, n = path.name.removeprefix("events.out.tfevents.").rsplit(".", 3)
    assert int(t) > 0 and int(pid) == os.getpid() and n.isdigit() and host

    acc = _accumulator(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == sorted(t for t in tags if written[t])
    for tag, pairs in written.items():
        if not pairs:
            continue
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [s for s, _ in pairs]
        assert [np.float32(e.value) for e in got] == [np.float32(v) for _, v in pairs]
        assert [e.wall_time for e in got] == [1.5e9 + s for s, _ in pairs]
    (text,) = acc.Tensors("config")
    assert text.step == 7 and text.tensor_proto.string_val == [b"```json\n{\"a\": 1}\n```"]
    assert acc.SummaryMetadata("config").plugin_data.plugin_name == "text"

    # the first event says the file version, with nothing else
    from tensorboard.compat.proto.event_pb2 import Event

    records = _records(path)
    first = Event.FromString(records[0])
    assert first.file_version == "brain.Event:2" and not first.HasField("summary")
    assert len(records) == 1 + len(steps) + 1


def test_reader_checks_the_crcs(tmp_path):
    """A flipped byte makes TensorBoard's reader stop at that record: the crcs it accepted for
    the intact file are real checks, not ignored fields."""
    w = tracking.EventWriter(tmp_path)
    for step in range(1, 6):
        w.scalars(step, {"x": float(step)})
    w.close()
    raw = bytearray(w.path.read_bytes())
    assert len(_records(w.path)) == 6
    # records are equal-sized past the first: corrupt the data of the 4th scalar event
    size = (len(raw) - len(tracking.tfrecord(tracking.event(0, 0.0, file_version="brain.Event:2")))) // 5
    start = len(raw) - 2 * size
    raw[start + 14] ^= 0x01  # inside the data (12 header bytes before it)
    bad = tmp_path / "bad" / w.path.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(raw))
    assert len(_records(bad)) == 4  # version + 3 intact scalar events
    raw[start + 14] ^= 0x01
    raw[start + 2] ^= 0x01  # in the length: its own crc fails
    bad.write_bytes(bytes(raw))
    assert len(_records(bad)) == 4


def test_protobuf_fields_decode_with_tensorboards_schema():
    from tensorboard.compat.proto.event_pb2 import Event

    e = Event.FromString(tracking.event(-3, 12.25, values=[tracking.scalar_value("a/b", 3e38 * 10)]))
    assert e.wall_time == 12.25 and e.step == -3
    (v,) = e.summary.value
    assert v.tag == "a/b" and math.isinf(v.simple_value)  # beyond float32: inf, as a cast


def test_fanout_drops_a_failing_backend(caplog):
    calls = []

    class Good:
        def scalars(self, step, values):
            calls.append(("good", step))

        def finish(self, metrics, config):
            calls.append(("good", "finish"))

        def close(self):
            calls.append(("good", "close"))

    class Bad(Good):
        def scalars(self, step, values):
            raise OSError("disk full")

        def close(self):
            calls.append(("bad", "close"))

    f = tracking.Fanout({"good": Good(), "bad": Bad()})
    f.scalars(1, {"x": 1.0})
    f.scalars(2, {"x": 1.0})
    f.finish({}, {})
    f.close()
    assert calls == [("good", 1), ("bad", "close"), ("good", 2), ("good", "finish"),
                     ("good", "close")]
    assert "bad failed in scalars (disk full)" in caplog.text


def test_missing_package_is_a_clear_error(monkeypatch):
    import sys

    from omegaconf import OmegaConf

    from w2s.config import LogConfig

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ImportError, match=r"log.wandb=true needs the 'wandb' package"):
        tracking.check(OmegaConf.structured(LogConfig(wandb=True)))
    tracking.check(OmegaConf.structured(LogConfig(tensorboard=True)))  # no package needed


@pytest.mark.parametrize("schedule,accum", [("cosine", 1), ("linear", 2), ("constant", 3)])
def test_logged_learning_rate_is_the_one_applied(schedule, accum):
    """With a constant gradient every Adam update moves a parameter by exactly the learning
    rate (m_hat = g, v_hat = g^2): the logged rate of step n is the step the optimizer took."""
    import jax
    import jax.numpy as jnp
    import optax

    from w2s.config import TrainConfig
    from w2s.train.loop import _Tracked
    from w2s.train.step import learning_rate, optimizer

    total = 24
    cfg = TrainConfig(optimizer="adam", warmup_frac=0.25, schedule=schedule, clip_norm=0.0,
                      grad_accum=accum)
    updates = total // accum
    tx = optimizer(cfg, 1e-2, updates)
    params = jnp.zeros(1)
    state = tx.init(params)
    moved, update = [], jax.jit(tx.update)
    for _ in range(total):
        step, state = update(jnp.ones(1), state, params)
        moved.append(-float(step[0]))
        params = optax.apply_updates(params, step)
    logged = _Tracked([None], learning_rate(cfg, 1e-2, updates), accum).lr(np.arange(1, total + 1))
    applied = [n for n in range(1, total + 1) if n % accum == 0]
    np.testing.assert_allclose([moved[n - 1] for n in applied], logged[np.array(applied) - 1],
                               rtol=1e-4, atol=1e-12)  # Adam in float32
    assert all(moved[n - 1] == 0 for n in range(1, total + 1) if n % accum)
    assert logged[0] == 0.0 and logged.max() == pytest.approx(1e-2)  # warm-up starts at 0


# -- the log node is cosmetic ------------------------------------------------------------------


def test_log_node_never_enters_run_ids(tiny_env, tmp_path):
    from w2s import runs

    plain = compose(tiny_overrides(tiny_env, tmp_path))
    logged = compose(tiny_overrides(
        tiny_env, tmp_path, "log.tensorboard=true", "log.wandb=true", "log.mlflow=true",
        f"log.dir={tmp_path / 'elsewhere'}", "log.group=mine",
    ))
    assert plain.log.dir == f"{tmp_path}/tracking" and plain.log.group is None
    assert not (plain.log.tensorboard or plain.log.wandb or plain.log.mlflow)
    for kind, m in (("weak", "weak"), ("ceiling", "strong")):
        assert (runs.gt_run_id(plain, kind, plain[m], 0, "rows")
                == runs.gt_run_id(logged, kind, logged[m], 0, "rows"))
    assert (runs.w2s_identity(plain, 0, "rows", ["w"], None)
            == runs.w2s_identity(logged, 0, "rows", ["w"], None))
    assert runs.config_for_table(plain) == runs.config_for_table(logged)
    assert tracking.experiment_group(plain) == "toy_tiny-weak_to_tiny-strong_xent"
    assert tracking.experiment_group(logged) == "mine"


# -- end to end ------------------------------------------------------------------------------


def _run(overrides):
    from w2s.cli import run

    return run(compose(overrides))


def _metrics(results: Path, kind: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(results.glob(f"runs/{kind}/*/metrics.json"))]


def _tb_dir(results: Path, group: str, m: dict) -> Path:
    model = m["weak_model"] if m["kind"] == "weak" else m["strong_model"]
    return (results / "tracking" / "tensorboard" / group / m["kind"] / model
            / f"seed{m['seed']}" / m["run_id"])


def _check_loss_history(steps, losses, m):
    """Per-step losses whose means over each report's steps are metrics.json's loss_history."""
    assert steps == list(range(1, m["steps"] + 1))
    reported = [s for s, _ in m["loss_history"]]
    starts = [0, *reported[:-1]]
    for (end, mean), start in zip(m["loss_history"], starts, strict=True):
        window = np.array(losses[start:end], np.float32)
        assert round(float(window.mean()), 6) == mean, (start, end)


def _analysis_sees_only_runs(results: Path, n: int) -> None:
    """The analysis walks all of results_dir: tracking files must not look like runs to it."""
    from analysis.runs import load_runs

    table, report = load_runs(results)
    assert len(table) == n and report.n_found == n and not report.skipped, report.to_markdown()


GROUP = "toy_tiny-weak_to_tiny-strong_xent"


def test_tensorboard_run_end_to_end(tiny_env, tmp_path):
    lr = 1e-2
    fixed = ("train.early_stop.runs=[]",)  # every run trains 3 epochs, evaluated every 7 steps
    _run(tiny_overrides(tiny_env, tmp_path, "log.tensorboard=true", "train.epochs=3",
                        "train.eval_every=7", *fixed))
    runs_seen = 0
    for kind in ("weak", "ceiling", "w2s"):
        (m,) = _metrics(tmp_path, kind)
        d = _tb_dir(tmp_path, GROUP, m)
        assert len(list(d.glob("events.out.tfevents.*"))) == 1, sorted(d.iterdir())
        acc = _accumulator(d)
        loss = acc.Scalars("train/loss")
        _check_loss_history([e.step for e in loss], [e.value for e in loss], m)
        # final scalars are the recorded metrics, at the last step
        for key in ("accuracy", "auroc", "train_seconds", "n_test", "examples_per_second"):
            (final,) = acc.Scalars(f"final/{key}")
            assert final.step == m["steps"] and final.value == np.float32(m[key]), key
        # val scores are the recorded eval curve (7, 14, 21, 28 in the reports, 30 after)
        val = acc.Scalars("val/score")
        assert [[e.step, np.float32(e.value)] for e in val] == [
            [s, np.float32(v)] for s, v in m["eval_curve"]]
        assert [e.step for e in val] == [7, 14, 21, 28, 30]
        val_loss = acc.Scalars("val/loss")
        assert [[e.step, np.float32(e.value)] for e in val_loss] == [
            [s, np.float32(v)] for s, v in m["val_loss_curve"]]
        # cosine decay without warm-up over the run's updates: the rate of each step's update
        rates = acc.Scalars("train/lr")
        want = [lr * 0.5 * (1 + math.cos(math.pi * (s - 1) / m["steps"])) for s in range(1, 31)]
        np.testing.assert_allclose([e.value for e in rates], want, rtol=1e-5, atol=1e-9)
        assert [e.step for e in acc.Scalars("train/examples_per_second")] == [10, 20, 30]
        accs = [e.value for e in acc.Scalars("train/accuracy")]
        assert len(accs) == 30 and all(0 <= a <= 1 for a in accs)
        config = json.loads((d / "config.json").read_text())
        assert config["run"]["run_id"] == m["run_id"] and config["experiment"]["log"]["tensorboard"]
        (text,) = acc.Tensors("config")
        assert json.loads(text.tensor_proto.string_val[0].decode().strip("`json\n")) == config
        runs_seen += 1
    events = list((tmp_path / "tracking").rglob("events.out.tfevents.*"))
    assert len(events) == runs_seen == 3
    _analysis_sees_only_runs(tmp_path, 3)

    # reused runs are not trained again, so they add no tracked runs
    _run(tiny_overrides(tiny_env, tmp_path, "log.tensorboard=true", "train.epochs=3",
                        "train.eval_every=7", *fixed))
    assert len(list((tmp_path / "tracking").rglob("events.out.tfevents.*"))) == 3


def test_side_by_side_seeds_get_their_own_runs(tiny_env, tmp_path):
    _run(tiny_overrides(tiny_env, tmp_path, "log.tensorboard=true", "log.group=pair",
                        "kinds=[weak]", "seeds=[0,1]", "train.vmap_seeds=2",
                        "task.split_seed=0", "train.epochs=2"))
    ms = _metrics(tmp_path, "weak")
    assert sorted(m["seed"] for m in ms) == [0, 1]
    assert all(m["trained_side_by_side"] == 2 for m in ms)
    curves = []
    for m in ms:
        d = _tb_dir(tmp_path, "pair", m)
        (_,) = d.glob("events.out.tfevents.*")
        loss = _accumulator(d).Scalars("train/loss")
        _check_loss_history([e.step for e in loss], [e.value for e in loss], m)
        curves.append([e.value for e in loss])
    assert curves[0] != curves[1]  # each seed its own curve, not one copied to both


def test_failed_run_keeps_its_curve(tiny_env, tmp_path):
    from w2s.cli import run

    with pytest.raises(FloatingPointError):
        run(compose(tiny_overrides(tiny_env, tmp_path, "log.tensorboard=true", "kinds=[weak]",
                                   "weak.lr=1e38")))
    (events,) = (tmp_path / "tracking").rglob("events.out.tfevents.*")
    acc = _accumulator(events.parent)
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert losses and not np.isfinite(losses).all()  # logged up to and with the failure
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("final/")]
    assert not (events.parent / "config.json").exists()


# -- W&B and MLflow, offline (when installed) ----------------------------------------------------


def _wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """History rows of an offline run, from its ``run-<id>.wandb`` record log (a LevelDB-style
    log of 32 KiB blocks after a 7-byte ``:W&B`` header) parsed with W&B's protobuf schema."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    raw = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", raw[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    records, partial, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, n, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if n == 0 and kind == 0:
            break
        data, pos = raw[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind == 1:
            records.append(data)
        elif kind in (2, 3):
            partial += data
        elif kind == 4:
            records.append(partial + data)
            partial = b""
    rows: dict[int, dict[str, float]] = {}
    for data in records:
        r = pb.Record.FromString(data)
        if r.WhichOneof("record_type") == "history":
            row = rows.setdefault(r.history.step.num, {})
            for item in r.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows


def test_wandb_and_mlflow_offline(tiny_env, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(tiny_overrides(tiny_env, tmp_path, "log.tensorboard=true", "log.wandb=true",
                        "log.mlflow=true", "kinds=[weak]", "train.epochs=2"))
    (m,) = _metrics(tmp_path, "weak")
    name = f"weak/tiny-weak/seed0/{m['run_id']}"
    tb = _accumulator(_tb_dir(tmp_path, GROUP, m)).Scalars("train/loss")
    tb_losses = [np.float32(e.value) for e in tb]

    client = MlflowClient(tracking.mlflow_uri(tmp_path / "tracking"))
    exp = client.get_experiment_by_name(GROUP)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == name and run.info.status == "FINISHED"
    assert run.data.tags["w2s.run_id"] == m["run_id"]
    history = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda x: x.step)
    _check_loss_history([x.step for x in history], [x.value for x in history], m)
    assert [np.float32(x.value) for x in history] == tb_losses
    assert run.data.metrics["final/accuracy"] == m["accuracy"]
    assert run.data.params["run.run_id"] == m["run_id"]

    (run_dir,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*")
    rows = _wandb_history(run_dir)
    steps = sorted(s for s, row in rows.items() if "train/loss" in row)
    _check_loss_history(steps, [rows[s]["train/loss"] for s in steps], m)
    assert [np.float32(rows[s]["train/loss"]) for s in steps] == tb_losses
    _analysis_sees_only_runs(tmp_path, 1)
