"""Causal-LM throughput on CPU: w2s (JAX) against transformers (torch), as ratios in one run.

Two measurements on the same checkpoint (default: SmolLM2-135M-Instruct, float32, from
``w2s-fetch --only smollm2``):

- ``generation``: greedy decoding of ``--new-tokens`` tokens for chat-formatted arithmetic
  questions at each ``--batches`` size: ``w2s.generate.generate`` on right-padded prompts
  against ``model.generate(do_sample=False)`` on left-padded ones (as transformers needs for
  batched decoder generation). EOS stops neither side (w2s: ``eos_id=None``; transformers: no
  ``eos_token_id``), so both always produce exactly ``batch x new`` tokens, and the greedy
  tokens must agree (reported as the fraction of identical rows: a sanity check, since float32
  round-off may flip a near tie late in a long continuation of the real model).
- ``sft``: one SFT optimizer step: w2s's ``make_lm_step`` (jitted, donated, with
  ``w2s.train.step.optimizer``: global-norm clipping, then AdamW; logits only at the positions
  that predict response tokens, as ``train_lm`` runs it) against an eager torch step on
  transformers' ``LlamaForCausalLM`` with the same weights: response-masked mean NLL,
  ``clip_grad_norm_`` and ``torch.optim.AdamW`` at the same settings, same batch. Tokens/s
  counts non-pad tokens; the first (and second) step losses of both are reported: same weights
  and batch give the same first loss, and the same optimizer the same second one.

Each side is warmed up first (the w2s call that compiles; transformers' first call), then the
sides alternate within each repeat (order reversed every other repeat), and the report gives
medians, the median of per-repeat ratios (``paired``), the CPU cores other processes used while
each timing ran, and the load average (conventions of ``benchmarks/train_throughput.py``).

    python benchmarks/generate.py --json /tmp/generate.json
    python benchmarks/generate.py --torch-threads 1  # torch on one thread (a busy machine)
    python benchmarks/generate.py --smoke            # tiny random Llama, a few seconds

On a machine shared with another busy process, torch's default of one OpenMP thread per core
can stall many-fold (SmolLM2 batch-1 decoding measured 200-490 ms/token with two threads
against 71 ms/token with one, two cores, one taken by a neighbour), which inflates the ratios;
``--torch-threads 1`` is the fairer reference there, and the 'other cores' columns tell.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2s.runtime import configure as configure_cpu_runtime

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the device
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local checkpoints only: never wait on the network

ROOT = Path(__file__).resolve().parents[1]  # run from a checkout without installing w2s
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _sibling(name: str):
    """Another script of this folder, loaded by path once (registered: dataclasses need it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


tt = _sibling("train_throughput")  # cpu_ticks, time_steps, versions, write_json, restrict_cpus

DEFAULT_MODEL = Path("~/.cache/w2s/models/smollm2-135m-instruct").expanduser()
QUIET = tt.QUIET
LR = 1e-5
# Short arithmetic questions of different lengths, with worked answers for the SFT batch.
QA = (
    ("What is 17 + 25?", "17 + 25 = 42: the tens give 10 + 20 = 30, the ones 7 + 5 = 12."),
    (
        "Compute 144 divided by 12.",
        "144 / 12 = 12, because 12 x 12 = 144. So the answer is 12.",
    ),
    (
        "I have 3 apples, buy 5 more and then eat 2. How many apples do I have now?",
        "You start with 3, buying 5 makes 3 + 5 = 8, and eating 2 leaves 8 - 2 = 6 apples.",
    ),
    ("What is 9 times 8?", "9 x 8 = 72."),
    (
        "A train runs at 60 km per hour for 2.5 hours. How far does it go?",
        "Distance is speed times time: 60 km/h x 2.5 h = 150 km. The train goes 150 km.",
    ),
    (
        "What is 1000 minus 387?",
        "1000 - 387 = 613. Check: 613 + 387 = 1000, so the answer is 613.",
    ),
)
# --smoke: a tiny random Llama (tied head and grouped-query attention, like SmolLM2).
# initializer_range 0.15: at HF's 0.02 a random tiny LM greedily repeats one token, which would
# make the token agreement check toothless.
SMOKE_CONFIG = dict(
    vocab_size=101,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    initializer_range=0.15,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
SMOKE_ARGS = dict(
    batches="1,4",
    new_tokens=8,
    repeats=2,
    sft_batch=4,
    sft_seq=32,
    sft_steps=1,
    sft_repeats=2,
    torch_threads=1,  # tiny ops gain nothing from a second thread, and a busy core stalls it
)


# ------------------------------------------------------------------------------ inputs


@dataclass
class Texts:
    """Token ids of prompts (chat-formatted) and of their responses (EOS included)."""

    prompts: list[list[int]]
    responses: list[list[int]]
    pad_id: int
    source: str


def chat_texts(path: Path) -> Texts:
    """The QA pairs through the checkpoint's tokenizer and chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    prompts, responses = [], []
    for q, a in QA:
        chat = [{"role": "user", "content": q}]
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        prompts.append(tok(text, add_special_tokens=False)["input_ids"])
        responses.append([*tok(a, add_special_tokens=False)["input_ids"], tok.eos_token_id])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Texts(prompts, responses, int(pad), "chat template, arithmetic questions")


def random_texts(vocab: int, seed: int = 0) -> Texts:
    """Random ids (never 0, the pad id) of several lengths, for the tiny smoke model."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, n).tolist() for n in (7, 3, 11, 5)]
    responses = [rng.integers(3, vocab, n).tolist() for n in (9, 14, 6, 12)]
    return Texts(prompts, responses, 0, "random ids")


def padded(rows: list[list[int]], pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows as ids and mask [B, longest], padded on the ``side`` (right or left)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, cols], mask[i, cols] = r, 1
    return ids, mask


def cycle(items: list, n: int) -> list:
    """``n`` items, repeating the list as often as needed."""
    return [items[i % len(items)] for i in range(n)]


def sft_batch(texts: Texts, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Right-padded prompt + response rows [batch, seq]; the loss covers the response."""
    ids = np.full((batch, seq), texts.pad_id, np.int32)
    attn = np.zeros((batch, seq), np.int32)
    loss = np.zeros((batch, seq), np.int32)
    pairs = cycle(list(zip(texts.prompts, texts.responses, strict=True)), batch)
    for i, (p, r) in enumerate(pairs):
        if len(p) >= seq:
            raise SystemExit(f"--sft-seq {seq} leaves no room for a response after {len(p)}")
        row = [*p, *r][:seq]
        ids[i, : len(row)], attn[i, : len(row)], loss[i, len(p) : len(row)] = row, 1, 1
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss}


def make_smoke_checkpoint(out: Path) -> Path:
    """A tiny random LlamaForCausalLM saved as a checkpoint folder (torch float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOKE_CONFIG)).save_pretrained(out, safe_serialization=True)
    return out


# ------------------------------------------------------------------------------ timing


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, n: int = 1) -> dict:
    """Each callable timed ``n`` calls at a time, alternating (order reversed every other
    repeat): name -> (seconds per call list, other-process cores list); plus the load."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    others: dict[str, list[float]] = {k: [] for k in fns}
    loads = []
    for r in range(repeats):
        for name in list(fns) if r % 2 == 0 else list(reversed(fns)):
            seconds, foreign = tt.time_steps(fns[name], n)
            times[name].append(seconds)
            others[name].append(foreign)
        loads.append(os.getloadavg()[0])
    return {"times": times, "others": others, "loads": loads}


def timed_once(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def side_summary(times: list[float], others: list[float], work: int) -> dict:
    """Median seconds per call and ``work`` (tokens per call) per median second."""
    med = statistics.median(times)
    quiet = [t for t, o in zip(times, others, strict=True) if o < QUIET]
    return {
        "seconds_median": med,
        "seconds_min": min(times),
        "seconds_all": times,
        "other_cores_all": others,
        "other_cores_median": statistics.median(others),
        "seconds_quiet_median": statistics.median(quiet) if quiet else None,
        "tokens_per_s": work / med,
    }


def pair_ratios(mine: dict, ref: dict) -> dict:
    """w2s tokens/s over the reference's: of the medians, and the median per-repeat ratio."""
    pairs = zip(ref["seconds_all"], mine["seconds_all"], strict=True)
    return {
        "ratio": mine["tokens_per_s"] / ref["tokens_per_s"],
        "ratio_paired": statistics.median(r / m for r, m in pairs),
    }


# ------------------------------------------------------------------------------ generation


def bench_generation(lm, model, texts: Texts, batch: int, new: int, repeats: int) -> dict:
    """w2s's ``generate`` and transformers' ``generate`` on the same prompts, greedy, EOS off."""
    import jax
    import torch
    from transformers import GenerationConfig

    from w2s.generate import bucket_length, generate

    prompts = cycle(texts.prompts, batch)
    r_ids, r_mask = padded(prompts, texts.pad_id, "right")
    l_ids, l_mask = padded(prompts, texts.pad_id, "left")
    l_ids_t, l_mask_t = torch.as_tensor(l_ids, dtype=torch.long), torch.as_tensor(l_mask)
    # No stopping at EOS: exactly ``new`` tokens, as w2s with eos_id=None. transformers fills a
    # None eos_token_id of the given config from ``model.generation_config`` (config.json's
    # eos), so the EOS has to go from there; min_new_tokens=new would instead suppress EOS and
    # make the greedy tokens differ from w2s's wherever the model ends its answer.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = texts.pad_id
    config = GenerationConfig(do_sample=False, max_new_tokens=new, pad_token_id=texts.pad_id)

    def w2s_call():
        return jax.block_until_ready(generate(lm, r_ids, r_mask, new, eos_id=None))

    def torch_call():
        with torch.inference_mode():
            out = model.generate(
                input_ids=l_ids_t, attention_mask=l_mask_t, generation_config=config
            )
        return out[:, l_ids.shape[1] :]

    compile_s, w2s_tokens = timed_once(w2s_call)
    first_s, torch_tokens = timed_once(torch_call)
    w2s_tokens, torch_tokens = np.asarray(w2s_tokens), torch_tokens.numpy()
    if w2s_tokens.shape != (batch, new) or torch_tokens.shape != (batch, new):
        raise RuntimeError(
            f"token shapes {w2s_tokens.shape} / {torch_tokens.shape} != {batch, new}"
        )
    same = w2s_tokens == torch_tokens
    prefix = np.where(same.all(1), new, np.argmin(same, axis=1))  # tokens before the first miss
    runs = interleaved({"w2s": w2s_call, "transformers": torch_call}, repeats)
    work = batch * new
    sides = {k: side_summary(runs["times"][k], runs["others"][k], work) for k in runs["times"]}
    sides["w2s"]["first_call_s"] = compile_s
    sides["transformers"]["first_call_s"] = first_s
    return {
        "batch": batch,
        "new_tokens": new,
        "prompt_lengths": [len(p) for p in prompts],
        "w2s_prompt_bucket": bucket_length(max(len(p) for p in prompts)),
        "sides": sides,
        **pair_ratios(sides["w2s"], sides["transformers"]),
        "rows_identical": float(same.all(1).mean()),
        "tokens_identical": float(same.mean()),
        "common_prefix_mean": float(prefix.mean()),
        "loadavg_1min_during": runs["loads"],
    }


# ------------------------------------------------------------------------------ SFT step


def torch_response_nll(logits, input_ids, loss_mask):
    """``w2s.lm.losses.response_nll`` in torch: mean NLL over the response tokens."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    m = loss_mask[:, 1:].float()
    return -(target * m).sum() / m.sum().clamp_min(1.0)


def build_w2s_sft(lm, data: dict[str, np.ndarray], cfg, lr: float) -> tt.Trainer:
    """``make_lm_step`` with ``optimizer(cfg, lr, total)`` as ``train_lm`` builds it. ``lm``'s
    arrays are donated to the step: the model is not usable afterwards."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from w2s.lm.losses import response_targets
    from w2s.lm.step import make_lm_step
    from w2s.train.step import optimizer

    graphdef, params = nnx.split(lm)
    tx = optimizer(cfg, lr, 1000)
    step_fn = make_lm_step(graphdef, tx)
    # as train_lm does: logits only where the loss is (the targets are made on the host per batch)
    data = {**data, **response_targets(data["input_ids"], data["loss_mask"])}
    batch = {k: jnp.asarray(v) for k, v in data.items()}
    state = {"params": params, "opt": tx.init(params)}
    losses: list = []

    def step() -> None:
        state["params"], state["opt"], loss = step_fn(state["params"], state["opt"], batch)
        jax.block_until_ready((state["params"], loss))
        if len(losses) < 2:
            losses.append(loss)

    compile_s, _ = timed_once(step)
    return tt.Trainer(step, {"first_step_s": compile_s, "losses": losses})


def build_torch_sft(model, data: dict[str, np.ndarray], cfg, lr: float) -> tt.Trainer:
    """The same step in eager torch: NLL over response tokens, clipping, AdamW (optax's adamw
    defaults: betas 0.9/0.999, eps 1e-8 outside the square root, decoupled weight decay)."""
    import torch

    if cfg.optimizer != "adamw" or cfg.grad_accum != 1:
        raise ValueError("the torch reference implements adamw without accumulation only")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay
    )
    t = {k: torch.as_tensor(v, dtype=torch.long) for k, v in data.items()}
    losses: list = []

    def step() -> None:
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
        loss = torch_response_nll(logits, t["input_ids"], t["loss_mask"])
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if len(losses) < 2:
            losses.append(loss.detach())

    first_s, _ = timed_once(step)
    info = {"first_step_s": first_s, "losses": losses, "threads": torch.get_num_threads()}
    return tt.Trainer(step, info)


def bench_sft(lm, model, texts: Texts, args: argparse.Namespace) -> dict:
    """The two SFT steps on one batch, warmed up (two steps each), then interleaved."""
    from w2s.config import TrainConfig

    # constant learning rate, no warm-up: torch's AdamW sees the same rate at every step
    cfg = TrainConfig(schedule="constant", warmup_frac=0.0)
    data = sft_batch(texts, args.sft_batch, args.sft_seq)
    trainers = {
        "w2s": build_w2s_sft(lm, data, cfg, args.lr),
        "torch": build_torch_sft(model, data, cfg, args.lr),
    }
    for t in trainers.values():  # the second step: no compile, and the second loss
        t.step()
    runs = interleaved({k: t.step for k, t in trainers.items()}, args.sft_repeats, args.sft_steps)
    tokens = int(data["attention_mask"].sum())
    sides = {k: side_summary(runs["times"][k], runs["others"][k], tokens) for k in trainers}
    for k, t in trainers.items():
        sides[k]["first_step_s"] = t.info["first_step_s"]
        sides[k]["losses"] = [float(x) for x in t.info["losses"]]
    return {
        "batch": args.sft_batch,
        "seq": args.sft_seq,
        "tokens": tokens,
        "response_tokens": int(data["loss_mask"].sum()),
        "steps_per_timing": args.sft_steps,
        "optimizer": {
            "name": cfg.optimizer,
            "lr": args.lr,
            "schedule": cfg.schedule,
            "clip_norm": cfg.clip_norm,
            "weight_decay": cfg.weight_decay,
        },
        "sides": sides,
        **pair_ratios(sides["w2s"], sides["torch"]),
        "loss_first_diff": abs(sides["w2s"]["losses"][0] - sides["torch"]["losses"][0]),
        "loss_second_diff": abs(sides["w2s"]["losses"][1] - sides["torch"]["losses"][1]),
        "loadavg_1min_during": runs["loads"],
    }


# ------------------------------------------------------------------------------ running


def run_benchmark(args: argparse.Namespace, path: Path) -> dict:
    """Generation at each batch size, then the SFT step (which consumes the w2s model)."""
    import torch
    from transformers import LlamaForCausalLM

    from w2s.models import load_lm

    load_start = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    texts = random_texts(SMOKE_CONFIG["vocab_size"]) if args.smoke else chat_texts(path)
    lm = load_lm(str(path), dtype="float32")
    model = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    batches = [int(b) for b in str(args.batches).split(",") if b]
    threads = torch.get_num_threads()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    try:
        torch_threads = torch.get_num_threads()
        generation = [
            bench_generation(lm, model, texts, b, args.new_tokens, args.repeats) for b in batches
        ]
        sft = bench_sft(lm, model, texts, args) if args.sft_batch > 0 else None
    finally:  # process-wide: leave it as found (the smoke test runs in-process)
        torch.set_num_threads(threads)
    return {
        "model": "smoke: tiny random Llama" if args.smoke else str(path),
        "texts": texts.source,
        "date": started,
        "date_end": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": tt.versions(),
        "torch_attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch_threads": torch_threads,
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "generation": generation,
        "sft": sft,
    }


def _cores(side: dict) -> str:
    return f"{side['other_cores_median']:.2f}"


def format_result(res: dict) -> str:
    """The figures as two small tables, then the ratios' conditions."""
    lines = [f"{res['model']}  ({res['date']}; prompts: {res['texts']})", ""]
    lines.append(
        f"{'generation':<12} {'w2s s':>8} {'tok/s':>8} {'hf s':>8} {'tok/s':>8} "
        f"{'w2s/hf':>7} {'paired':>7} {'rows same':>9} {'other cores w2s/hf':>19}"
    )
    for g in res["generation"]:
        w, h = g["sides"]["w2s"], g["sides"]["transformers"]
        lines.append(
            f"{'batch ' + str(g['batch']):<12} {w['seconds_median']:>8.3f} "
            f"{w['tokens_per_s']:>8.1f} {h['seconds_median']:>8.3f} {h['tokens_per_s']:>8.1f} "
            f"{g['ratio']:>7.2f} {g['ratio_paired']:>7.2f} {g['rows_identical']:>9.2f} "
            f"{_cores(w) + ' / ' + _cores(h):>19}"
        )
    if res["generation"]:
        g = res["generation"][0]
        lines.append(
            f"  {g['new_tokens']} new tokens each, greedy, EOS off; prompt lengths "
            f"{sorted(set(p for x in res['generation'] for p in x['prompt_lengths']))}; "
            f"first calls (compile) w2s "
            + ", ".join(f"{x['sides']['w2s']['first_call_s']:.1f}s" for x in res["generation"])
        )
    s = res["sft"]
    if s:
        lines.append("")
        lines.append(
            f"{'SFT step':<12} {'step s':>8} {'tok/s':>8} {'loss 1':>10} {'loss 2':>10} "
            f"{'first step s':>12} {'other cores':>11}"
        )
        for name, side in s["sides"].items():
            l1, l2 = side["losses"]
            lines.append(
                f"{name:<12} {side['seconds_median']:>8.3f} {side['tokens_per_s']:>8.1f} "
                f"{l1:>10.6f} {l2:>10.6f} {side['first_step_s']:>12.1f} {_cores(side):>11}"
            )
        lines.append(
            f"  batch {s['batch']} x seq {s['seq']}: {s['tokens']} non-pad tokens "
            f"({s['response_tokens']} in the loss); w2s/torch tokens/s = {s['ratio']:.2f} "
            f"(paired {s['ratio_paired']:.2f}); |loss diff| step 1 {s['loss_first_diff']:.1e}, "
            f"step 2 {s['loss_second_diff']:.1e}"
        )
    v = res["versions"]
    during = [x for g in res["generation"] for x in g["loadavg_1min_during"]]
    during += s["loadavg_1min_during"] if s else []
    lines.append("")
    lines.append(
        f"load average at start {', '.join(f'{x:.2f}' for x in res['loadavg_start'])}; "
        f"1-min during {min(during):.2f}-{max(during):.2f} on {v['cpu_count']} CPUs "
        f"({v['cpus_used']} used); 'other cores': CPUs busy with other processes while timing"
    )
    lines.append(
        f"jax {v['jax']}, flax {v['flax']}, torch {v['torch']} ({res['torch_threads']} threads, "
        f"attention {res['torch_attn_implementation']}), transformers {v['transformers']}; "
        f"w2s.runtime {v.get('w2s_cpu_runtime', '?')}"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint folder")
    ap.add_argument("--batches", default="1,16", help="generation batch sizes, comma-separated")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed generation calls per side")
    ap.add_argument("--sft-batch", type=int, default=8, help="0 skips the SFT step")
    ap.add_argument("--sft-seq", type=int, default=128)
    ap.add_argument("--sft-steps", type=int, default=1, help="steps per SFT timing")
    ap.add_argument("--sft-repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny random Llama and tiny sizes (" + ", ".join(SMOKE_ARGS) + ")",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch's intra-op threads (default: torch's own choice, one per core); with a "
        "neighbour process busy, two OpenMP threads on two cores can stall torch many-fold",
    )
    ap.add_argument("--cpus", type=int, default=None, help="run on the first N CPUs only")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:  # tiny sizes unless given explicitly
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        for key, value in SMOKE_ARGS.items():
            if "--" + key.replace("_", "-") not in given:
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_cpu_runtime()  # what importing w2s does; process-wide, so torch runs under it too
    tt.restrict_cpus(args.cpus)
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_benchmark(args, make_smoke_checkpoint(Path(tmp) / "tiny-llama"))
    else:
        if not (args.model / "config.json").is_file():
            raise SystemExit(f"no checkpoint at {args.model}; run `w2s-fetch --only smollm2`")
        res = run_benchmark(args, args.model)
    print(format_result(res))
    if args.json:
        tt.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
