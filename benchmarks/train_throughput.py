"""Classification train-step throughput: the w2s JAX step against two PyTorch references.

One run builds the same randomly initialised classifier (backbone + pooling + linear head,
cross-entropy, AdamW, gradient clipping) three ways and times them side by side:

- ``jax``: w2s's jitted ``make_train_step`` with donated params and optimizer state;
- ``torch``: transformers' model of the same config, batched, eager (or ``--torch-compile``);
- ``anchor``: the OpenAI weak-to-strong loop in torch: minibatches of one unpadded example,
  gradients accumulated over the batch, then one optimizer step.

Trainers alternate within each repeat (order reversed every other repeat) and the report
gives medians, so a neighbour process loading the machine hits all three alike; the load
average is recorded with the figures. No checkpoint is needed: weights are random.

    python benchmarks/train_throughput.py --model minilm --batch 32 --seq 64 --dtype float32
    python benchmarks/train_throughput.py --all-gpu --json gpu.json     # on an H100/H200

Model FLOPs per step = 6 * non-embedding params * real tokens + 12 * layers * hidden *
sum(len_i^2) (the attention score and value products, forward and backward, counted over the
full square even for causal models, as in the PaLM/Megatron convention).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from w2s.runtime import configure as configure_cpu_runtime

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # known configs only: never wait on the network

ROOT = Path(__file__).resolve().parents[1]  # run from a checkout without installing w2s
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MINILM = {  # all-MiniLM-L6-v2's shape; not among w2s.plan's hub facts
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
}
MODELS = {  # --model name -> hub id whose config facts w2s.plan knows offline
    "minilm": None,
    "gpt2": "gpt2",
    "gpt2-medium": "gpt2-medium",
    "gpt2-large": "gpt2-large",
    "gpt2-xl": "gpt2-xl",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B",
    "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
}
# (model, batch) at seq 512 in bf16. JAX and torch hold their own f32 params + AdamW state on
# the same GPU at once (16 B/param each), so the largest models get the smallest batches to
# stay inside an 80 GB H100 (estimate for gpt2-xl at batch 4: ~31 GB jax + ~33 GB torch).
GPU_PRESET = (
    ("gpt2", 32),
    ("gpt2-medium", 32),
    ("gpt2-large", 16),
    ("gpt2-xl", 4),
    ("qwen2.5-0.5b", 16),
    ("qwen2.5-1.5b", 8),
)
PEAK_TFLOPS = {  # dense tensor-core peaks (SXM); float32 matmuls run as TF32 at best
    ("h100", "bfloat16"): 989.0,
    ("h200", "bfloat16"): 989.0,
    ("h100", "float32"): 494.7,
    ("h200", "float32"): 494.7,
}
EMBEDDING_NAMES = {
    "word_embeddings",
    "position_embeddings",
    "token_type_embeddings",
    "wte",
    "wpe",
    "embed_tokens",
}
TRAINERS = ("jax", "torch", "anchor")
QUIET = 0.1  # a timing is "quiet" when other processes used less than this many cores
NUM_LABELS = 2
LR = 1e-5


@dataclass
class Spec:
    """One benchmark configuration; ``hf`` is the HF config dict of the backbone."""

    name: str
    hf: dict
    batch: int = 32
    seq: int = 64
    dtype: str = "float32"
    steps: int = 5
    repeats: int = 5
    min_len_frac: float = 1.0
    torch_compile: bool = False
    trainers: tuple[str, ...] = TRAINERS
    attention: str = "auto"  # xla | cudnn | auto: cudnn for bf16 on a GPU, else xla
    remat: str = "none"  # per-layer remat of the w2s model: none | full | dots
    scan_layers: bool = False  # the w2s model's layers stacked and scanned
    seed: int = 0


@dataclass
class Trainer:
    """A callable doing one full optimizer step and waiting for it to finish."""

    step: Callable[[], None]
    info: dict


def hf_config_for(name: str) -> dict:
    """HF config dict for a --model name, from w2s.plan's offline facts (MiniLM from here)."""
    if name not in MODELS:
        raise SystemExit(f"--model '{name}' unknown; choose from {', '.join(MODELS)}")
    if MODELS[name] is None:
        return dict(MINILM)
    from w2s.plan import hf_config

    return hf_config(MODELS[name])


# ------------------------------------------------------------------------------ inputs


def make_inputs(spec: Spec) -> dict[str, np.ndarray]:
    """Right-padded random ids, lengths in [min_len_frac * seq, seq], one-hot targets."""
    rng = np.random.default_rng(spec.seed)
    low = max(1, int(round(spec.min_len_frac * spec.seq)))
    lengths = rng.integers(low, spec.seq + 1, size=spec.batch)
    lengths[0] = spec.seq  # the padded width is always seq
    ids = rng.integers(1, spec.hf["vocab_size"], size=(spec.batch, spec.seq))
    mask = (np.arange(spec.seq)[None, :] < lengths[:, None]).astype(np.int32)
    labels = rng.integers(0, NUM_LABELS, size=spec.batch).astype(np.int32)
    return {
        "input_ids": (ids * mask).astype(np.int32),
        "attention_mask": mask,
        "lengths": lengths.astype(np.int64),
        "labels": labels,
        "targets": np.eye(NUM_LABELS, dtype=np.float32)[labels],
        "weight": np.ones(spec.batch, np.float32),
    }


# ------------------------------------------------------------------------------ jax


def _is_embedding(path: tuple) -> bool:
    return any(str(p) in EMBEDDING_NAMES for p in path)


def attention_impl(choice: str, dtype: str) -> str:
    """w2s's attention kernel: cuDNN's fused one where it applies (GPU, 16-bit), else XLA."""
    if choice != "auto":
        return choice
    import jax

    return "cudnn" if jax.default_backend() == "gpu" and dtype == "bfloat16" else "xla"


def build_jax(spec: Spec, data: dict[str, np.ndarray]) -> Trainer:
    """The w2s step exactly as ``w2s.train.loop`` compiles it (jit, donated state)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from w2s.config import TrainConfig
    from w2s.models import Classifier
    from w2s.models.registry import family_for
    from w2s.train.losses import step_loss
    from w2s.train.step import make_train_step, optimizer

    attention = attention_impl(spec.attention, spec.dtype)
    family = family_for(spec.hf.get("model_type"), spec.name)
    cfg = family.config_from_hf(spec.hf)
    backbone = family.module(
        cfg,
        dtype=jnp.dtype(spec.dtype),
        param_dtype=jnp.float32,
        attention=attention,
        remat=spec.remat,
        scan_layers=spec.scan_layers,
        rngs=nnx.Rngs(spec.seed),
    )
    model = Classifier(backbone, NUM_LABELS, family.pooling)
    graphdef, params = nnx.split(model)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    non_embedding = sum(v.get_value().size for p, v in flat if not _is_embedding(p))
    tx = optimizer(TrainConfig(), LR, 1000)

    step_fn = jax.jit(make_train_step(graphdef, tx, step_loss()), donate_argnums=(0, 1))
    keys = ("input_ids", "attention_mask", "targets", "labels", "weight")
    batch = jax.device_put({k: data[k] for k in keys})
    state = {"params": params, "opt": tx.init(params)}
    frac = np.float32(0.5)

    def step() -> None:
        state["params"], state["opt"], stats = step_fn(state["params"], state["opt"], batch, frac)
        jax.block_until_ready((state["params"], stats))

    t0 = time.perf_counter()
    step()
    info = {
        "compile_s": time.perf_counter() - t0,
        "non_embedding_params": int(non_embedding),
        "pooling": family.pooling,
        "attention": attention,
        "remat": spec.remat,
        "scan_layers": spec.scan_layers,
    }
    return Trainer(step, info)


# ------------------------------------------------------------------------------ torch


def torch_backbone(hf: dict):
    """transformers' base model of the same config, dropout off (w2s has none)."""
    import transformers as tf

    kind = hf["model_type"]
    if kind == "bert":
        cfg = tf.BertConfig(**hf, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.BertModel(cfg, add_pooling_layer=False)
    if kind == "gpt2":
        cfg = tf.GPT2Config(**hf, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return tf.GPT2Model(cfg)
    if kind == "qwen2":
        return tf.Qwen2Model(tf.Qwen2Config(**hf, attention_dropout=0.0))
    raise ValueError(f"no torch reference for model_type '{kind}'")


def torch_pool(hidden, mask, pooling: str):
    """Same pooling as ``w2s.models.classifier.pool`` for right-padded rows."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask[..., None].float()
    return (hidden.float() * m).sum(1) / m.sum(1).clamp_min(1.0)


def torch_loss(backbone, head, ids, mask, targets, pooling: str, amp) -> object:
    """Cross-entropy of backbone + pooling + head, logits in float32."""
    import torch

    with amp():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = head(torch_pool(hidden, mask, pooling).float())
    log_p = torch.log_softmax(logits.float(), -1)
    return -(targets * log_p).sum(-1).mean()


def _amp(device: str, dtype: str) -> Callable:
    import torch

    def ctx():
        return torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    return ctx


def build_torch(spec: Spec, data: dict[str, np.ndarray], pooling: str) -> dict[str, Trainer]:
    """The batched trainer and the batch-1 anchor, sharing one model and optimizer."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and spec.dtype == "float32":  # JAX's default f32 GPU matmul is TF32 too
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.manual_seed(spec.seed)
    backbone = torch_backbone(spec.hf)
    head = torch.nn.Linear(backbone.config.hidden_size, NUM_LABELS)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model = torch.nn.ModuleDict({"backbone": backbone, "head": head}).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    t = {k: torch.as_tensor(v, device=device) for k, v in data.items()}
    amp = _amp(device, spec.dtype)
    compiled = torch.compile(backbone) if spec.torch_compile else backbone
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def update() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    def batched() -> None:
        ids, mask = t["input_ids"], t["attention_mask"]
        torch_loss(compiled, head, ids, mask, t["targets"], pooling, amp).backward()
        update()

    def anchor() -> None:
        for i, n in enumerate(data["lengths"].tolist()):  # one unpadded example at a time
            row = slice(i, i + 1)
            ids, mask = t["input_ids"][row, :n], t["attention_mask"][row, :n]
            loss = torch_loss(backbone, head, ids, mask, t["targets"][row], pooling, amp)
            (loss / spec.batch).backward()
        update()

    info = {
        "device": device,
        "threads": torch.get_num_threads(),
        "attn_implementation": getattr(backbone.config, "_attn_implementation", None),
    }
    trainers = {"torch": Trainer(batched, dict(info, compiled=spec.torch_compile))}
    trainers["anchor"] = Trainer(anchor, dict(info, compiled=False))
    t0 = time.perf_counter()
    batched()
    trainers["torch"].info["first_step_s"] = time.perf_counter() - t0
    return trainers


# ------------------------------------------------------------------------------ measuring


def cpu_ticks() -> tuple[float, float]:
    """(busy seconds of all CPUs, CPU seconds of this process) so far, Linux only."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    own = os.times()
    return busy, own.user + own.system


def time_steps(step: Callable[[], None], n: int) -> tuple[float, float]:
    """(mean seconds per step over ``n`` steps, CPU cores other processes used meanwhile).

    The second figure is what makes a noisy measurement recognisable: on a shared machine
    a trainer that lost cores to a neighbour shows it here, not only in a slower time.
    """
    busy0, own0 = cpu_ticks()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_ticks()
    return wall / n, max(0.0, (busy1 - busy0) - (own1 - own0)) / wall


def model_flops(spec: Spec, non_embedding: int, lengths: np.ndarray) -> dict[str, float]:
    """Per-step model FLOPs of the batched trainers (padded) and of the anchor (unpadded)."""
    layers = spec.hf.get("num_hidden_layers", spec.hf.get("n_layer"))
    hidden = spec.hf.get("hidden_size", spec.hf.get("n_embd"))
    padded = (
        6 * non_embedding * spec.batch * spec.seq + 12 * layers * hidden * spec.batch * spec.seq**2
    )
    real = 6 * non_embedding * int(lengths.sum()) + 12 * layers * hidden * int((lengths**2).sum())
    return {"jax": float(padded), "torch": float(padded), "anchor": float(real)}


def device_peak(dtype: str, override: float | None) -> tuple[str, float | None]:
    """(JAX device kind, peak TFLOP/s or None when unknown, e.g. on CPU)."""
    import jax

    kind = jax.devices()[0].device_kind
    if override:
        return kind, override
    for (name, dt), peak in PEAK_TFLOPS.items():
        if name in kind.lower() and dt == dtype:
            return kind, peak
    return kind, None


def versions() -> dict[str, str]:
    import flax
    import jax
    import optax
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": str(os.cpu_count()),
        "cpus_used": str(len(os.sched_getaffinity(0))),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "w2s_cpu_runtime": json.dumps(configure_cpu_runtime()),
    }


def build_all(spec: Spec, data: dict[str, np.ndarray]) -> tuple[dict[str, Trainer], dict]:
    """The chosen trainers, warmed up, and the JAX model's facts (always built: the FLOP
    count and the pooling come from it)."""
    trainers = {"jax": build_jax(spec, data)}
    jax_info = trainers["jax"].info
    if {"torch", "anchor"} & set(spec.trainers):
        trainers.update(build_torch(spec, data, jax_info["pooling"]))
    chosen = {k: v for k, v in trainers.items() if k in spec.trainers}
    for t in chosen.values():  # one warm step each after compilation
        t.step()
    return chosen, jax_info


def run_benchmark(spec: Spec, peak_tflops: float | None = None) -> dict:
    """Build the trainers, time them interleaved, and return figures per trainer and ratios."""
    load_start = os.getloadavg()
    data = make_inputs(spec)
    trainers, jax_info = build_all(spec, data)
    times: dict[str, list[float]] = {k: [] for k in trainers}
    others: dict[str, list[float]] = {k: [] for k in trainers}
    loads = []
    for r in range(spec.repeats):
        order = list(trainers) if r % 2 == 0 else list(reversed(trainers))
        for name in order:
            seconds, foreign = time_steps(trainers[name].step, spec.steps)
            times[name].append(seconds)
            others[name].append(foreign)
        loads.append(os.getloadavg()[0])
    kind, peak = device_peak(spec.dtype, peak_tflops)
    flops = model_flops(spec, jax_info["non_embedding_params"], data["lengths"])
    results = {
        name: summarise(times[name], others[name], spec, flops[name], data["lengths"], peak)
        for name in trainers
    }
    return {
        "model": spec.name,
        "batch": spec.batch,
        "seq": spec.seq,
        "dtype": spec.dtype,
        "spec": {k: v for k, v in asdict(spec).items() if k != "hf"},
        "hf_config": spec.hf,
        "device": kind,
        "peak_tflops": peak,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "loadavg_start": list(load_start),
        "loadavg_1min_during": loads,
        "info": {"jax": jax_info, **{k: t.info for k, t in trainers.items()}},
        "trainers": results,
        "ratios": ratios(results),
    }


def summarise(
    times: list[float], others: list[float], spec: Spec, flops: float, lengths: np.ndarray, peak
) -> dict:
    """Median step time and the rates derived from it (tokens: non-pad tokens; the anchor's
    FLOPs are its unpadded work), plus the median over quiet timings alone."""
    med = statistics.median(times)
    quiet = [t for t, o in zip(times, others, strict=True) if o < QUIET]
    achieved = flops / med / 1e12
    return {
        "step_s_median": med,
        "step_s_min": min(times),
        "step_s_all": times,
        "other_cores_all": others,
        "other_cores_median": statistics.median(others),
        "step_s_quiet_median": statistics.median(quiet) if quiet else None,
        "quiet_samples": len(quiet),
        "examples_per_s": spec.batch / med,
        "tokens_per_s": int(lengths.sum()) / med,
        "model_tflops_per_step": flops / 1e12,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
    }


def ratios(results: dict) -> dict[str, float]:
    """Examples/s of jax over each reference (> 1: jax is faster).

    ``jax/X`` divides the medians; ``jax/X paired`` is the median of the per-repeat ratios of
    adjacent measurements, which cancels load that changes slowly over the run; ``quiet``
    keeps only the repeats where neither timing shared the machine.
    """
    if "jax" not in results:
        return {}
    out = {}
    mine = results["jax"]
    for name, ref in results.items():
        if name == "jax":
            continue
        out[f"jax/{name}"] = mine["examples_per_s"] / ref["examples_per_s"]
        pairs = list(zip(ref["step_s_all"], mine["step_s_all"], strict=True))
        out[f"jax/{name} paired"] = statistics.median(r / j for r, j in pairs)
        calm = zip(ref["other_cores_all"], mine["other_cores_all"], strict=True)
        quiet = [r / j for (r, j), (a, b) in zip(pairs, calm, strict=True) if max(a, b) < QUIET]
        if quiet:
            out[f"jax/{name} quiet paired"] = statistics.median(quiet)
    return out


# ------------------------------------------------------------------------------ output


def format_result(res: dict) -> str:
    """A human-readable block: one line per trainer, then the ratios and the conditions."""
    head = (
        f"{res['model']}  batch {res['batch']}  seq {res['seq']}  {res['dtype']}  "
        f"device {res['device']}  ({res['date']})"
    )
    lines = [
        head,
        f"{'trainer':<8} {'step s (med)':>12} {'min':>8} {'ex/s':>9} {'tok/s':>10} "
        f"{'TFLOP/step':>10} {'MFU':>6} {'other cores':>11} {'quiet med (n)':>14}",
    ]
    for name, r in res["trainers"].items():
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        q = r["step_s_quiet_median"]
        quiet = f"{q:.4f} ({r['quiet_samples']})" if q is not None else "- (0)"
        lines.append(
            f"{name:<8} {r['step_s_median']:>12.4f} {r['step_s_min']:>8.4f} "
            f"{r['examples_per_s']:>9.2f} {r['tokens_per_s']:>10.0f} "
            f"{r['model_tflops_per_step']:>10.4f} {mfu:>6} {r['other_cores_median']:>11.2f} "
            f"{quiet:>14}"
        )
    lines.append(
        "ratios of examples/s: " + ", ".join(f"{k} = {v:.3f}" for k, v in res["ratios"].items())
    )
    v = res["versions"]
    lines.append(
        f"load average at start {', '.join(f'{x:.2f}' for x in res['loadavg_start'])}; "
        f"1-min during {min(res['loadavg_1min_during']):.2f}-{max(res['loadavg_1min_during']):.2f} "
        f"on {v['cpu_count']} CPUs ({v['cpus_used']} used); "
        f"'other cores': CPUs busy with other processes while timing; quiet: < {QUIET}"
    )
    lines.append(
        f"jax {v['jax']}, flax {v['flax']}, optax {v['optax']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, python {v['python']}; "
        f"w2s.runtime {v.get('w2s_cpu_runtime', '?')} (W2S_CPU_RUNTIME=default to compare)"
    )
    if "jax" in res["info"]:
        j = res["info"]["jax"]
        lines.append(
            f"jax compile + first step {j['compile_s']:.1f}s; attention {j['attention']}, "
            f"remat {j.get('remat', 'none')}, scan_layers {j.get('scan_layers', False)}"
        )
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    """Atomic write, so a crashed run never leaves a half-written result."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def preset_command(args: argparse.Namespace, name: str, batch: int, out: Path) -> list[str]:
    """This script's command line for one preset model, passing the shared options on."""
    cmd = [sys.executable, __file__, "--model", name, "--batch", str(batch), "--seq", "512"]
    cmd += ["--dtype", args.dtype, "--steps", str(args.steps), "--repeats", str(args.repeats)]
    cmd += ["--attention", args.attention, "--trainers", args.trainers, "--json", str(out)]
    cmd += ["--remat", args.remat] + (["--scan-layers"] if args.scan_layers else [])
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    if args.torch_compile:
        cmd.append("--torch-compile")
    return cmd


def run_gpu_preset(args: argparse.Namespace) -> list[dict]:
    """Each preset model in its own process, so one model's memory never limits the next."""
    results = []
    for name, batch in GPU_PRESET:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            proc = subprocess.run(preset_command(args, name, batch, out), check=False)
            if proc.returncode == 0:
                results.append(json.loads(out.read_text()))
            else:
                results.append({"model": name, "batch": batch, "error": proc.returncode})
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16"],
        help="compute dtype (params stay float32); default float32, bfloat16 with --all-gpu",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps per trainer per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--min-len-frac",
        type=float,
        default=1.0,
        help="row lengths uniform in [frac*seq, seq]; 1.0: no padding",
    )
    ap.add_argument("--trainers", default=",".join(TRAINERS))
    ap.add_argument("--torch-compile", action="store_true")
    ap.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
    ap.add_argument("--remat", default="none", choices=["none", "full", "dots"])
    ap.add_argument("--scan-layers", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument(
        "--all-gpu",
        action="store_true",
        help="gpt2..gpt2-xl and Qwen2.5-0.5B/1.5B at seq 512, one process each",
    )
    ap.add_argument(
        "--cpus",
        type=int,
        default=None,
        help="run on the first N CPUs only (both libraries size their thread pools from it)",
    )
    ap.add_argument("--json", type=Path, default=None)
    return ap.parse_args(argv)


def restrict_cpus(n: int | None) -> None:
    """Pin before jax/torch start, so a shared machine can be compared core for core."""
    if n:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_cpu_runtime()  # what importing w2s does; process-wide, so torch runs under it too
    args.dtype = args.dtype or ("bfloat16" if args.all_gpu else "float32")
    restrict_cpus(args.cpus)
    if args.all_gpu:
        results = run_gpu_preset(args)
        for res in results:
            print(format_result(res) if "trainers" in res else f"{res['model']}: FAILED ({res})")
            print()
        if args.json:
            write_json(args.json, results)
        return 0 if all("trainers" in r for r in results) else 1
    spec = Spec(
        name=args.model,
        hf=hf_config_for(args.model),
        batch=args.batch,
        seq=args.seq,
        dtype=args.dtype,
        steps=args.steps,
        repeats=args.repeats,
        min_len_frac=args.min_len_frac,
        torch_compile=args.torch_compile,
        attention=args.attention,
        remat=args.remat,
        scan_layers=args.scan_layers,
        trainers=tuple(args.trainers.split(",")),
    )
    res = run_benchmark(spec, args.peak_tflops)
    print(format_result(res))
    if args.json:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
