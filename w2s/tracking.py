"""Experiment tracking: per-step scalars and final metrics of each run, to TensorBoard, W&B or
MLflow.

One tracked run per W2S run, named ``<kind>/<model>/seed<k>/<run_id>`` and grouped by
experiment (``log.group``, else task, weak, strong and loss). Tracking is cosmetic: the ``log``
node never enters run ids, and a backend that fails mid-run is dropped with a warning rather
than losing the training run. TensorBoard event files are written here in pure Python (no
TensorFlow or torch); W&B and MLflow are imported only when enabled, in their offline modes
unless ``WANDB_MODE`` / ``MLFLOW_TRACKING_URI`` say otherwise.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import socket
import struct
import time
from itertools import count
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from w2s.runs import RunSpec

log = logging.getLogger("w2s")

BACKENDS = ("tensorboard", "wandb", "mlflow")


class Tracker(Protocol):
    """What the train loop and the pipeline report to, for one run."""

    def scalars(self, step: int, values: dict[str, float]) -> None: ...

    def finish(self, metrics: dict, config: dict) -> None: ...

    def close(self) -> None: ...


# -- crc32c and TFRecord framing ---------------------------------------------------------------


def _crc_table(poly: int = 0x82F63B78) -> list[int]:
    """Byte table of the reflected Castagnoli polynomial (what TFRecord checksums use)."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C of ``data`` (continuing from ``crc``); crc32c(b"123456789") == 0xE3069283."""
    table = _CRC_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The rotated and offset crc TFRecord stores, so that crcs of crcs are not trivial."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One record: uint64 length, masked crc of the length, data, masked crc of the data."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# -- protobuf wire format (just what tensorboard's Event needs) -------------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64s as their two's complement, like protobuf
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _bytes_field(field: int, payload: bytes | str) -> bytes:
    if isinstance(payload, str):
        payload = payload.encode()
    return _key(field, 2) + _varint(len(payload)) + payload


def _float32(x: float) -> bytes:
    try:
        return struct.pack("<f", x)
    except OverflowError:  # beyond float32's range: what a float32 cast gives
        return struct.pack("<f", math.copysign(math.inf, x))


def scalar_value(tag: str, value: float) -> bytes:
    """Summary.Value{tag=1, simple_value=2 (float)}."""
    return _bytes_field(1, tag) + _key(2, 5) + _float32(float(value))


def text_value(tag: str, text: str) -> bytes:
    """Summary.Value{tag=1, metadata=9 {plugin_data=1 {plugin_name=1 "text"}},
    tensor=8 {dtype=1 DT_STRING(7), tensor_shape=2 {} (a scalar), string_val=8}}."""
    metadata = _bytes_field(1, _bytes_field(1, "text"))
    tensor = _key(1, 0) + _varint(7) + _bytes_field(2, b"") + _bytes_field(8, text)
    return _bytes_field(1, tag) + _bytes_field(9, metadata) + _bytes_field(8, tensor)


def event(step: int, wall_time: float, *, values: list[bytes] = (), file_version: str = "") -> bytes:
    """Event{wall_time=1 (double), step=2 (int64), file_version=3, summary=5 {value=1...}}."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
    if file_version:
        out += _bytes_field(3, file_version)
    if values:
        out += _bytes_field(5, b"".join(_bytes_field(1, v) for v in values))
    return out


_FILE_COUNTER = count()


class EventWriter:
    """An ``events.out.tfevents.<time>.<host>.<pid>.<n>`` file in ``logdir``.

    Flushed at most every ``flush_secs`` while scalars come in, and on close, so that a live
    TensorBoard sees a run progress without a write per step.
    """

    def __init__(self, logdir: str | Path, flush_secs: float = 5.0):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_FILE_COUNTER)}"
        )
        self.path = self.logdir / name
        self._file = open(self.path, "wb")
        self._flush_secs = flush_secs
        self._flushed = time.monotonic()
        self._write(event(0, time.time(), file_version="brain.Event:2"))
        self.flush()

    def _write(self, data: bytes) -> None:
        self._file.write(tfrecord(data))
        if time.monotonic() - self._flushed > self._flush_secs:
            self.flush()

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        items = [scalar_value(tag, v) for tag, v in values.items()]
        self._write(event(step, time.time() if wall_time is None else wall_time, values=items))

    def text(self, step: int, tag: str, text: str) -> None:
        self._write(event(step, time.time(), values=[text_value(tag, text)]))

    def flush(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            self._file.close()


# -- backends -----------------------------------------------------------------------------------


def final_scalars(metrics: dict) -> dict[str, float]:
    """The numeric top-level fields of a run's metrics (accuracy, auroc, train_seconds, ...)."""
    return {
        f"final/{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, numbers.Real) and not isinstance(v, bool)
    }


def flatten(node, prefix: str = "") -> dict:
    """Nested dicts as dotted keys (for backends whose parameters are flat)."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TensorBoardTracker:
    """Event files under ``<log.dir>/tensorboard/<group>/<run name>/``, ``config.json`` beside
    them (the config also as a text summary, shown in TensorBoard's Text tab)."""

    def __init__(self, root: Path, group: str, name: str):
        self.dir = root / "tensorboard" / _safe(group) / "/".join(map(_safe, name.split("/")))
        self.writer = EventWriter(self.dir)
        self._last = 0

    def scalars(self, step, values):
        self._last = max(self._last, int(step))
        self.writer.scalars(step, values)

    def finish(self, metrics, config):
        step = int(metrics.get("steps") or self._last)
        self.writer.scalars(step, final_scalars(metrics))
        text = json.dumps(config, indent=2, sort_keys=True, default=str)
        self.writer.text(step, "config", f"```json\n{text}\n```")
        (self.dir / "config.json").write_text(text + "\n")

    def close(self):
        self.writer.close()


class WandbTracker:
    """A W&B run (``reinit='create_new'``: side-by-side seeds are separate runs at once)."""

    def __init__(self, root: Path, group: str, name: str, header: dict):
        wandb = _require("wandb", "log.wandb")
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "w2s"),
            dir=str(root),
            group=group,
            name=name,
            job_type=header.get("kind"),
            config={"run": header},
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
            # no banner, and stdout/stderr left alone (the progress bar and console are ours)
            settings=wandb.Settings(quiet=True, console="off"),
        )
        self._finished = False

    def scalars(self, step, values):
        self.run.log(dict(values), step=int(step))

    def finish(self, metrics, config):
        self.run.config.update(config, allow_val_change=True)
        self.run.summary.update(
            {k.removeprefix("final/"): v for k, v in final_scalars(metrics).items()}
        )
        self._finished = True

    def close(self):
        self.run.finish(exit_code=0 if self._finished else 1)


class MlflowTracker:
    """An MLflow run through the client API (no global active run, so several can be open)."""

    def __init__(self, root: Path, group: str, name: str, header: dict):
        _require("mlflow", "log.mlflow")
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not self.uri:
            self.uri = mlflow_uri(root)
            # MLflow >= 3.7 refuses file stores unless asked (sqlite needs the full package)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(group)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(group)
            except Exception:  # a parallel job created it first
                exp_id = self.client.get_experiment_by_name(group).experiment_id
        else:
            exp_id = exp.experiment_id
        tags = {f"w2s.{k}": str(v) for k, v in header.items()}
        self.run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
        self._finished = False

    def _metrics(self, step, values):
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        return [Metric(k, float(v), ms, int(step)) for k, v in values.items()]

    def scalars(self, step, values):
        self.client.log_batch(self.run_id, metrics=self._metrics(step, values))

    def finish(self, metrics, config):
        from mlflow.entities import Param

        step = int(metrics.get("steps") or 0)
        self.client.log_batch(self.run_id, metrics=self._metrics(step, final_scalars(metrics)))
        params = [Param(k[:250], str(v)[:500]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # the store's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config, "config.json")
        self._finished = True

    def close(self):
        self.client.set_terminated(self.run_id, "FINISHED" if self._finished else "FAILED")


def mlflow_uri(root: Path) -> str:
    """The local file store MLflow writes to by default: ``file://<log.dir>/mlruns``."""
    return (Path(root).absolute() / "mlruns").as_uri()


class Fanout:
    """The enabled backends of one run as one tracker; a backend that fails is dropped."""

    def __init__(self, backends: dict[str, Tracker]):
        self.backends = dict(backends)

    def _each(self, method: str, *args) -> None:
        for name, backend in list(self.backends.items()):
            try:
                getattr(backend, method)(*args)
            except Exception as e:
                log.warning("tracking: %s failed in %s (%s); no longer logging to it", name,
                            method, e)
                self.backends.pop(name)
                _close_quietly(backend)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self._each("scalars", step, values)

    def finish(self, metrics: dict, config: dict) -> None:
        self._each("finish", metrics, config)

    def close(self) -> None:
        for backend in self.backends.values():
            _close_quietly(backend)
        self.backends = {}


def _close_quietly(backend) -> None:
    try:
        backend.close()
    except Exception as e:
        log.warning("tracking: closing %s failed (%s)", type(backend).__name__, e)


# -- configuration --------------------------------------------------------------------------


def enabled(log_cfg) -> list[str]:
    return [b for b in BACKENDS if log_cfg is not None and getattr(log_cfg, b, False)]


def check(log_cfg) -> None:
    """Fail before anything trains when an enabled backend's package is missing."""
    for b in enabled(log_cfg):
        if b != "tensorboard":
            _require(b, f"log.{b}")


def experiment_group(cfg) -> str:
    """``log.group``, else the experiment: ``<task>_<weak>_to_<strong>_<loss>``."""
    if cfg.log.group:
        return str(cfg.log.group)
    from w2s.runs import loss_name

    weaks = "+".join(m.name for m in [cfg.weak, *cfg.extra_weak])
    return f"{cfg.task.name}_{weaks}_to_{cfg.strong.name}_{loss_name(cfg)}"


def run_name(header: dict, model: str) -> str:
    return f"{header['kind']}/{model}/seed{header['seed']}/{header['run_id']}"


def make_trackers(cfg, run: RunSpec) -> Fanout | None:
    """The enabled backends for one run, or None (nothing enabled, or not process 0)."""
    names = enabled(cfg.get("log"))
    if not names:
        return None
    from w2s.distributed import is_lead

    if not is_lead():
        return None
    root = Path(str(cfg.log.dir)).expanduser()
    group, name = experiment_group(cfg), run_name(run.header, run.model.name)
    backends: dict[str, Tracker] = {}
    try:
        for b in names:
            if b == "tensorboard":
                backends[b] = TensorBoardTracker(root, group, name)
            elif b == "wandb":
                backends[b] = WandbTracker(root, group, name, run.header)
            else:
                backends[b] = MlflowTracker(root, group, name, run.header)
    except BaseException:
        Fanout(backends).close()
        raise
    return Fanout(backends)


def _require(package: str, key: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"{key}=true needs the '{package}' package, which is not installed: "
            f"pip install {package} (or set {key}=false)"
        ) from e


def _safe(part: str) -> str:
    """A path component TensorBoard and shells take as is."""
    return re.sub(r"[^A-Za-z0-9._+=-]", "_", str(part)) or "_"
