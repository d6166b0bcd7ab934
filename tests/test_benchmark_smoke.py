"""The throughput benchmark on a tiny BERT, checked against what it claims to measure.

- Its timings are the timed steps and nothing else: every call of each trainer's step is
  clocked here, so the per-step times it reports are recomputed from an outside clock; the
  compile step and the warm-up step come before, and the trainers alternate as documented.
- Its rates and FLOP counts follow from those times and from the batch itself (non-pad tokens
  counted from the mask, parameters counted on the torch model).
- The torch reference computes w2s's loss: same weights, same batch, same loss and gradient.
- ``time_steps`` returns seconds per step for a step of known duration.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings")


def _load_benchmark():
    """The script is not a package module; load it by path (registered: dataclasses need it)."""
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tt():
    return _load_benchmark()


def _spec(tt, **kw):
    tiny = dict(
        tt.MINILM,
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    args = dict(name="tiny", hf=tiny, batch=4, seq=8, steps=2, repeats=2, min_len_frac=0.5)
    return tt.Spec(**{**args, **kw})


def _clocked(trainer, name: str, calls: list):
    """The same trainer, each call of its step recorded as (name, start, end)."""
    step = trainer.step

    def timed() -> None:
        t0 = time.perf_counter()
        step()
        calls.append((name, t0, time.perf_counter()))

    trainer.step = timed
    return trainer


def test_reported_figures_are_the_timed_steps(tt, monkeypatch):
    calls: list[tuple[str, float, float]] = []
    build_jax, build_torch = tt.build_jax, tt.build_torch

    def jax_clocked(spec, data):  # wrapped after its compile step, before the warm-up
        return _clocked(build_jax(spec, data), "jax", calls)

    def torch_clocked(spec, data, pooling):
        return {k: _clocked(t, k, calls) for k, t in build_torch(spec, data, pooling).items()}

    monkeypatch.setattr(tt, "build_jax", jax_clocked)
    monkeypatch.setattr(tt, "build_torch", torch_clocked)
    spec = _spec(tt)
    res = tt.run_benchmark(spec)
    trainers = list(res["trainers"])
    assert trainers == ["jax", "torch", "anchor"]

    # one warm-up call each, then `steps` calls per repeat; the reported seconds per step of
    # repeat r are this clock's span over that repeat's calls / steps (plus loop overhead, and
    # 5 ms for a neighbour's preemption on a shared machine)
    starts = {}
    for name in trainers:
        mine = [c for c in calls if c[0] == name]
        assert len(mine) == 1 + spec.steps * spec.repeats, name
        timed = mine[1:]
        reported = res["trainers"][name]["step_s_all"]
        assert len(reported) == spec.repeats
        for r in range(spec.repeats):
            chunk = timed[r * spec.steps : (r + 1) * spec.steps]
            span = chunk[-1][2] - chunk[0][1]  # the benchmark's clock starts before, ends after
            total = reported[r] * spec.steps
            assert span <= total <= 1.1 * span + 5e-3, (name, r, span, total)
            starts[name, r] = chunk[0][1]
    warm_end = max(next(c for c in calls if c[0] == n)[2] for n in trainers)
    assert warm_end < min(starts.values())  # all warm-up before any timing
    # trainers alternate, the order reversed every other repeat
    for r in range(spec.repeats):
        order = sorted(trainers, key=lambda n: starts[n, r])
        assert order == (trainers if r % 2 == 0 else trainers[::-1]), (r, order)
    # the compile step is timed apart from the steps, and dwarfs them
    jax_steps = res["trainers"]["jax"]["step_s_all"]
    assert res["info"]["jax"]["compile_s"] > 10 * max(jax_steps)
    assert res["info"]["torch"]["first_step_s"] > 0

    # rates from the reported times and the batch: tokens are the mask's ones (the batch is
    # padded, so batch * seq would differ)
    data = tt.make_inputs(spec)
    tokens = int(np.count_nonzero(data["attention_mask"]))
    lengths = data["attention_mask"].sum(1)
    assert tokens < spec.batch * spec.seq
    for name in trainers:
        fig = res["trainers"][name]
        med = float(np.median(fig["step_s_all"]))
        assert fig["step_s_median"] == pytest.approx(med, rel=1e-12)
        assert fig["examples_per_s"] == pytest.approx(spec.batch / med, rel=1e-12)
        assert fig["tokens_per_s"] == pytest.approx(tokens / med, rel=1e-12)
    for ref in ("torch", "anchor"):
        j, o = res["trainers"]["jax"], res["trainers"][ref]
        assert res["ratios"][f"jax/{ref}"] == pytest.approx(
            float(np.median(o["step_s_all"])) / float(np.median(j["step_s_all"])), rel=1e-12
        )
        paired = statistics.median(
            a / b for a, b in zip(o["step_s_all"], j["step_s_all"], strict=True)
        )
        assert res["ratios"][f"jax/{ref} paired"] == pytest.approx(paired, rel=1e-12)

    # model FLOPs: 6 * non-embedding params * tokens + 12 * layers * hidden * sum(len^2), with
    # the parameters counted on the torch model (backbone + linear head)
    import torch

    torch.manual_seed(0)
    backbone = tt.torch_backbone(spec.hf)
    n = sum(
        p.numel()
        for k, p in backbone.named_parameters()
        if not k.startswith(tuple(f"embeddings.{e}" for e in EMBEDDINGS))
    )
    h, layers = spec.hf["hidden_size"], spec.hf["num_hidden_layers"]
    n += h * tt.NUM_LABELS + tt.NUM_LABELS
    assert res["info"]["jax"]["non_embedding_params"] == n
    padded = 6 * n * spec.batch * spec.seq + 12 * layers * h * spec.batch * spec.seq**2
    real = 6 * n * tokens + 12 * layers * h * int((lengths**2).sum())
    for name, flops in (("jax", padded), ("torch", padded), ("anchor", real)):
        assert res["trainers"][name]["model_tflops_per_step"] == pytest.approx(flops / 1e12)
    assert "jax/torch" in tt.format_result(res)


def test_torch_reference_computes_the_w2s_loss(tt, tmp_path):
    """The torch trainer's model (as build_torch seeds it), pooling and loss against w2s's on
    the same weights and the same padded batch, in train mode as the benchmark runs it."""
    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from w2s.models import load_classifier
    from w2s.models.registry import family_for
    from w2s.train.losses import step_loss
    from w2s.train.step import batch_loss

    spec = _spec(tt)
    data = tt.make_inputs(spec)
    pooling = family_for(spec.hf["model_type"], "tiny").pooling
    torch.manual_seed(spec.seed)
    backbone = tt.torch_backbone(spec.hf).train()
    backbone.save_pretrained(tmp_path)
    head = torch.nn.Linear(spec.hf["hidden_size"], tt.NUM_LABELS)  # random, unlike the zero init
    t = {k: torch.as_tensor(v) for k, v in data.items()}
    loss_t = tt.torch_loss(
        backbone,
        head,
        t["input_ids"],
        t["attention_mask"],
        t["targets"],
        pooling,
        tt._amp("cpu", "float32"),
    )
    loss_t.backward()

    model = load_classifier(str(tmp_path), tt.NUM_LABELS, pooling=pooling)
    model.head.kernel.set_value(jnp.asarray(head.weight.detach().numpy().T))
    model.head.bias.set_value(jnp.asarray(head.bias.detach().numpy()))
    graphdef, params = nnx.split(model)
    keys = ("input_ids", "attention_mask", "targets", "labels", "weight")
    batch = {k: jnp.asarray(data[k]) for k in keys}

    def loss(p):
        return batch_loss(graphdef, p, batch, jnp.float32(0.5), step_loss())

    (loss_j, _), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert abs(loss_t.item() - np.log(2)) > 1e-3  # a random head: not the uniform ln 2
    assert float(loss_j) == pytest.approx(loss_t.item(), abs=1e-5)
    np.testing.assert_allclose(
        np.asarray(grads["head"]["kernel"].get_value()).T, head.weight.grad.numpy(), atol=1e-5
    )


@pytest.mark.parametrize("pooling", ["cls", "last", "mean"])
def test_torch_pool_matches_w2s_pool(tt, pooling):
    import jax.numpy as jnp
    import torch

    from w2s.models.classifier import pool

    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 5, 4)).astype(np.float32)
    mask = (np.arange(5)[None] < np.array([[5], [2], [1]])).astype(np.int32)
    want = np.asarray(pool(jnp.asarray(hidden), jnp.asarray(mask), pooling))
    got = tt.torch_pool(torch.as_tensor(hidden), torch.as_tensor(mask), pooling).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_time_steps_is_seconds_per_step(tt):
    calls = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.02)

    per_step, others = tt.time_steps(step, 4)
    assert len(calls) == 4
    assert 0.02 <= per_step < 0.05  # 4 x 20 ms / 4; not the total (0.08), not wall / 16
    assert others >= 0


GENERATE = SCRIPT.with_name("generate.py")


def test_generate_benchmark_smoke_reports_what_it_timed(monkeypatch, tmp_path):
    """benchmarks/generate.py --smoke in-process on a tiny random Llama: the reported seconds
    are the interleaved timed calls (after the warm-ups), the rates follow from them and from
    the batch, both sides decode the same greedy tokens, and both SFT steps compute the same
    loss on the first step and, after one optimizer update each, on the second."""
    import json

    import torch

    spec = importlib.util.spec_from_file_location("generate_benchmark", GENERATE)
    gb = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, gb)  # registered, as dataclasses need
    spec.loader.exec_module(gb)
    timed: list[float] = []
    time_steps = gb.tt.time_steps

    def recorded(step, n):
        seconds, others = time_steps(step, n)
        timed.append(seconds)
        return seconds, others

    monkeypatch.setattr(gb.tt, "time_steps", recorded)
    threads = torch.get_num_threads()
    out = tmp_path / "smoke.json"
    assert gb.main(["--smoke", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # --smoke's torch_threads=1 is undone
    res = json.loads(out.read_text())
    smoke = gb.SMOKE_ARGS
    repeats, new = smoke["repeats"], smoke["new_tokens"]

    def in_timing_order(sides: dict, names: list[str], n: int) -> list[float]:
        """The reported seconds in the documented order: alternating, reversed every other
        repeat."""
        return [
            sides[k]["seconds_all"][r]
            for r in range(n)
            for k in (names if r % 2 == 0 else names[::-1])
        ]

    reported = []
    batches = [int(b) for b in smoke["batches"].split(",")]
    assert [g["batch"] for g in res["generation"]] == batches
    for g in res["generation"]:
        sides = g["sides"]
        reported += in_timing_order(sides, ["w2s", "transformers"], repeats)
        for side in sides.values():
            assert len(side["seconds_all"]) == repeats
            assert side["seconds_median"] == statistics.median(side["seconds_all"])
            assert side["tokens_per_s"] == pytest.approx(g["batch"] * new / side["seconds_median"])
        assert g["ratio"] == pytest.approx(
            sides["w2s"]["tokens_per_s"] / sides["transformers"]["tokens_per_s"]
        )
        assert g["rows_identical"] == 1.0 and g["tokens_identical"] == 1.0, g
        prompts = gb.cycle(gb.random_texts(gb.SMOKE_CONFIG["vocab_size"]).prompts, g["batch"])
        assert g["prompt_lengths"] == [len(p) for p in prompts]
    s = res["sft"]
    reported += in_timing_order(s["sides"], ["w2s", "torch"], smoke["sft_repeats"])
    assert timed == reported  # every timed call reported, nothing else (no warm-up, no compile)
    texts = gb.random_texts(gb.SMOKE_CONFIG["vocab_size"])
    data = gb.sft_batch(texts, smoke["sft_batch"], smoke["sft_seq"])
    assert s["tokens"] == int(data["attention_mask"].sum()) < data["input_ids"].size
    for side in s["sides"].values():
        assert side["tokens_per_s"] == pytest.approx(s["tokens"] / side["seconds_median"])
    (w1, w2), (t1, t2) = s["sides"]["w2s"]["losses"], s["sides"]["torch"]["losses"]
    assert abs(w1 - t1) < 1e-4 and abs(w2 - t2) < 1e-4, (w1, t1, w2, t2)
    assert w2 < w1 - 1e-3  # the first update changed the weights: the second loss checks it
