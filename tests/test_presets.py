"""Every shipped preset composes and passes the pipeline's checks; GPU choices are validated on
CPU, not executed; a config that cannot run is refused in one line before anything loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose
from w2s.checks import check_config
from w2s.cli import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
TRAINS = sorted(p.stem for p in (Path(CONF_DIR) / "train").glob("*.yaml"))
GPU = {"gpu"}  # train presets that pick cuDNN attention


@pytest.mark.parametrize("train", [None, *TRAINS])
@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_preset_composes_and_passes_the_checks(experiment, train):
    """Each experiment with its own train preset, and with each one chosen on the command line
    (which wins over the experiment's)."""
    overrides = ([f"train={train}"] if train else []) + (
        [f"+experiment={experiment}"] if experiment else []
    )
    cfg = compose(overrides)
    on_gpu = cfg.train.attention == "cudnn"
    assert on_gpu == (train in GPU or (train is None and experiment == "burns_gpt2"))
    if on_gpu and any(m.compute_dtype == "float32" for m in cfg.extra_weak):
        # train=gpu sets weak and strong; a list of extra supervisors is the user's to set
        with pytest.raises(ValueError, match=r"extra_weak\[0\]\.compute_dtype=float32"):
            check_config(cfg, "gpu")
        return
    check_config(cfg, "gpu" if on_gpu else "cpu")
    check_config(cfg)  # a dry run's check
    if on_gpu:  # cuDNN needs 16-bit compute: the preset sets it for both models
        assert cfg.weak.compute_dtype == cfg.strong.compute_dtype == "bfloat16"
        with pytest.raises(ValueError, match="runs only on an NVIDIA GPU.*'cpu'"):
            check_config(cfg, "cpu")


def test_burns_preset_keeps_its_gpu_choices():
    cfg = compose(["+experiment=burns_gpt2"])
    assert cfg.train.attention == "cudnn" and cfg.train.checkpoint_every == 200
    assert cfg.strong.param_dtype == "float32"  # float32 master weights under bf16 compute


@pytest.mark.parametrize("override, message", [
    ("strong.compute_dtype=float32",
     "train.attention=cudnn needs bfloat16 or float16 compute, but strong.compute_dtype=float32"),
    ("train.attention=flash", "train.attention='flash' unknown; use xla or cudnn"),
])
def test_configs_that_cannot_run_are_refused(override, message):
    cfg = compose(["train=gpu", override])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_config(cfg, "gpu")


def test_cudnn_with_float32_compute_is_one_line_from_the_cli(tmp_path):
    """Refused before anything is loaded: no model, no data, no run directory."""
    out = subprocess.run(
        [sys.executable, "-m", "w2s.cli", "train=gpu", "strong.compute_dtype=float32",
         "model@strong=local", "strong.path=/nonexistent", f"results_dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert out.returncode == 1
    err = [line for line in out.stderr.splitlines() if line.startswith("w2s: error")]
    assert err == [
        "w2s: error: ValueError: train.attention=cudnn needs bfloat16 or float16 compute, but "
        "strong.compute_dtype=float32; set them to bfloat16 (train=gpu does) or use "
        "train.attention=xla"
    ]
    assert not (tmp_path / "runs").exists()
