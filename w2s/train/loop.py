"""Epochs over bucketed batches: progress, checkpoints, resume and prediction.

The data order is a pure function of (seed, epoch), so a run resumed from step k replays the
same batches from k on and ends with the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from w2s.config import TrainConfig
from w2s.distributed import is_lead, to_host
from w2s.models import lora
from w2s.models.sharding import batch_sharding, on_mesh, shard_state
from w2s.train.batches import Batch, epoch_batches, eval_batches, pad_rows
from w2s.train.step import learning_rate, make_train_step, optimizer, predict_probs

log = logging.getLogger("w2s.train")


@dataclass
class View:
    """One tokenizer's token ids for every example of a split."""

    ids: list[np.ndarray]
    pad_id: int

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), np.int64, len(self.ids))

    def take(self, index: np.ndarray) -> View:
        return View([self.ids[i] for i in index], self.pad_id)


@dataclass
class TrainResult:
    params: object
    steps: int
    seconds: float
    compile_seconds: float
    examples_per_second: float
    resumed_from: int = 0
    history: list[dict] = field(default_factory=list)
    eval_curve: list[list] = field(default_factory=list)  # [[step, val accuracy], ...]
    selected_step: int = 0  # the step whose parameters the model ends with
    val_loss_curve: list[list] = field(default_factory=list)  # [[step, val loss], ...]
    max_steps: int = 0  # the budget: steps of train.epochs (or early_stop.max_epochs)
    stopped_at: int | None = None  # the step at which this seed's patience ran out


class StepCache:
    """Compiled steps shared by runs with the same model, optimizer and loss (e.g. seeds)."""

    def __init__(self):
        self._steps: dict = {}

    def get(self, key, build, out_shardings=None):
        if key not in self._steps:
            self._steps[key] = jax.jit(build(), donate_argnums=(0, 1), out_shardings=out_shardings)
        return self._steps[key]


STEPS = StepCache()
SELECTS = ("last", "best")


@dataclass(frozen=True)
class Stop:
    """Early stopping on the val loss: end a seed once ``patience`` evaluations in a row have
    not lowered its best val loss by more than ``min_delta``, and keep its best parameters.
    Replaces the epochs (``max_epochs``, the schedule's length) and the evaluation interval
    (``every`` steps; 0: once an epoch) of the train config."""

    patience: int
    max_epochs: int
    min_delta: float = 0.0
    every: int = 0


def _batch_arrays(view: View, teacher_view: View | None, b: Batch, targets, labels, extras) -> dict:
    ids, mask = pad_rows(view.ids, b.index, b.length, view.pad_id)
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "targets": targets[b.index].astype(np.float32),
        "labels": labels[b.index].astype(np.int32),
        "weight": b.weight,
        **{k: v[b.index] for k, v in extras.items()},
    }
    if teacher_view is not None:
        out["teacher_input_ids"], out["teacher_attention_mask"] = pad_rows(
            teacher_view.ids, b.index, b.length, teacher_view.pad_id
        )
    return out


def _max_lengths(view: View, teacher_view: View | None) -> np.ndarray:
    lengths = view.lengths
    if teacher_view is not None:
        lengths = np.maximum(lengths, teacher_view.lengths)
    return lengths


def train(
    model: nnx.Module,
    view: View,
    targets: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    *,
    seed: int,
    teacher=None,
    extras=None,
    **kw,
) -> TrainResult:
    """Train ``model`` in place on (view, targets); ``teacher=(model, view, T)`` for live KD.

    ``extras`` are further per-example arrays the loss reads from the batch (e.g. ``gt_mask``).
    """
    teachers = None if teacher is None else ([teacher[0]], teacher[1], teacher[2])
    return train_group(
        [model],
        view,
        [targets],
        labels,
        cfg,
        seeds=[seed],
        teachers=teachers,
        extras=[extras or {}],
        **kw,
    )[0]


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _stack_host(trees):
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _prefetched(items, build, pool):
    """Yield ``(item, build(item[1]))`` with the following item's build already under way."""
    items = iter(items)
    item = next(items, None)
    future = None if item is None else pool.submit(build, item[1])
    while item is not None:
        built = future.result()
        following = next(items, None)
        if following is not None:
            future = pool.submit(build, following[1])
        yield item, built
        item = following


def _unstack(tree, k: int):
    return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(k)]


def train_group(
    models: list[nnx.Module],
    view: View,
    targets: list[np.ndarray],
    labels: np.ndarray,
    cfg: TrainConfig,
    *,
    seeds: list[int],
    loss_fn,
    loss_key,
    lr: float,
    buckets: list[int],
    ckpt_dir: Path | None = None,
    teachers: tuple[list[nnx.Module], View, float] | None = None,
    extras: list[dict[str, np.ndarray]] | None = None,
    mesh=None,
    desc: str = "train",
    evaluate=None,
    select: str = "last",
    resume: bool = True,
    trackers: list | None = None,
    stop: Stop | None = None,
) -> list[TrainResult]:
    """Train K models of one architecture, one per seed, on the same rows, in one program.

    K = 1 is the plain jitted step; K > 1 vmaps that step over stacked parameters, so the K
    seeds share each compiled step (the bucket order of an epoch is the same for every seed;
    only the rows in each batch differ). With a mesh, parameters are placed by the model's
    sharding rules (FSDP/TP) and examples split over the data and fsdp axes.

    ``evaluate(graphdef, [state per seed]) -> [{"accuracy", "loss"} per seed]`` runs every
    ``cfg.eval_every`` steps and after the last; ``select='best'`` ends each seed with the
    parameters of its best evaluation by accuracy (the earliest on ties), ``'last'`` with the
    final ones. With ``stop``, selection is by the lowest val loss instead, and training ends
    when every seed's patience has run out (vmapped seeds stop together; each keeps its best).
    A resumed run restarts the patience count at the step it resumes from.
    ``resume=False`` ignores checkpoints left in ``ckpt_dir`` (a forced rerun starts afresh).
    ``trackers`` (one ``w2s.tracking.Tracker`` or None per model) get each step's scalars at
    the reports, so tracking adds no device syncs.
    """
    if select not in SELECTS:
        raise ValueError(f"train.select '{select}' unknown; use one of {', '.join(SELECTS)}")
    if stop is not None and evaluate is None:
        raise ValueError("early stopping needs an evaluation on val")
    k = len(models)
    extras = extras or [{} for _ in range(k)]
    graphdef, _ = nnx.split(models[0])
    params = _stack([nnx.state(m) for m in models]) if k > 1 else nnx.state(models[0])
    params = jax.tree.map(jnp.array, params)  # fresh buffers: the step donates them
    t_graphdef, t_params, t_view, temperature = None, None, None, 1.0
    if teachers is not None:
        t_graphdef = nnx.graphdef(teachers[0][0])
        t_states = [nnx.state(t) for t in teachers[0]]
        t_params = _stack(t_states) if k > 1 else t_states[0]
        t_view, temperature = teachers[1], teachers[2]
    lengths = _max_lengths(view, t_view)
    per_epoch = len(epoch_batches(lengths, buckets, cfg.batch_size, seeds[0], 0))
    epochs = cfg.epochs if stop is None else stop.max_epochs
    eval_every = cfg.eval_every if stop is None else (stop.every or per_epoch)
    total = per_epoch * epochs
    updates = max(total // max(cfg.grad_accum, 1), 1)
    trained = None
    if lora.has_adapters(models[0]):  # adapters and head train; the base stays as loaded
        trained = lora.trainable_labels(nnx.state(models[0]))
    tx = optimizer(cfg, lr, updates, trained)
    tracked = None
    if trackers and any(t is not None for t in trackers):
        tracked = _Tracked(trackers, learning_rate(cfg, lr, updates), cfg.grad_accum)
    rules = getattr(models[0], "sharding_rules", ())
    if mesh is not None:
        if cfg.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
            raise ValueError(
                f"train.batch_size={cfg.batch_size} does not split over mesh "
                f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}"
            )
        params = shard_state(params, _lead(rules, k), mesh)
        if t_params is not None:
            t_params = shard_state(
                t_params, _lead(getattr(teachers[0][0], "sharding_rules", ()), k), mesh
            )
    opt_state = jax.jit(jax.vmap(tx.init) if k > 1 else tx.init)(params)
    if mesh is not None:  # moments follow their parameters; scalars (step counts) replicate
        opt_state = jax.tree.map(lambda x: on_mesh(x, mesh), opt_state)
    key = (
        graphdef,
        t_graphdef,
        temperature,
        loss_key,
        _train_key(cfg),
        lr,
        updates,
        k,
        None if mesh is None else (tuple(mesh.shape.items()), tuple(mesh.devices.flat)),
    )
    out_shardings = None
    if mesh is not None:  # keep the placement fixed from step to step
        out_shardings = (
            jax.tree.map(lambda x: x.sharding, params),
            jax.tree.map(lambda x: x.sharding, opt_state),
            None,
        )

    # LoRA dropout: the step gets each seed and the step number, and derives its key inside
    # (``lora.dropout_key``): host integers, so no recompiling, and the masks are a function
    # of (seed, step) alone, the same resumed or vmapped. Without dropout, the plain step.
    dropout = lora.has_dropout(models[0])
    run_seeds = np.asarray(seeds if k > 1 else seeds[0], np.int32) if dropout else None

    def build():
        step = make_train_step(
            graphdef,
            tx,
            loss_fn,
            teacher=(t_graphdef, temperature) if teachers else None,
        )
        if dropout:
            keyless = step

            def step(params, opt_state, batch, frac, teacher_params, seed, n):
                key = lora.dropout_key(seed, n)
                return keyless(params, opt_state, batch, frac, teacher_params, key)

        if k > 1:
            in_axes = (0, 0, 0, None) + ((0,) if teachers else ())
            if dropout:
                in_axes = (0, 0, 0, None, 0 if teachers else None, 0, None)
            step = jax.vmap(step, in_axes=in_axes)
        return step

    step_fn = STEPS.get(key, build, out_shardings)
    data_sharding = None if mesh is None else batch_sharding(mesh, leading=int(k > 1))

    manager = _checkpointer(ckpt_dir, cfg.checkpoint_every) if ckpt_dir and k == 1 else None
    start = 0
    if manager is not None and resume and manager.latest_step() is not None:
        start = int(manager.latest_step())
        kept, frozen = _checkpointed(params, trained is not None)
        restored = _restore(manager, start, kept, opt_state)
        params, opt_state = restored["params"], restored["opt_state"]
        if frozen is not None:
            params = nnx.merge_state(params, frozen)
        log.info("%s: resumed from checkpoint at step %d", desc, start)

    history: list[dict] = []
    seen, t0, compile_s, step = 0, time.perf_counter(), 0.0, start
    bar = _progress(total, start, desc, cfg.progress)
    shapes_seen: set = set()
    pending = []
    curves: list[list] = [[] for _ in range(k)]
    loss_curves: list[list] = [[] for _ in range(k)]
    best: list[tuple | None] = [None] * k  # (metric, step, host params) per seed
    stale = [0] * k  # evaluations in a row without a better val loss
    stopped_at: list[int | None] = [None] * k

    eval_s = [0.0]  # evaluation time, left out of the training throughput

    def run_eval(at: int, state) -> None:
        t_eval = time.perf_counter()
        states = _unstack(state, k) if k > 1 else [state]
        for j, scores in enumerate(evaluate(graphdef, states)):
            acc, loss = float(scores["accuracy"]), float(scores["loss"])
            curves[j].append([at, acc])
            loss_curves[j].append([at, loss])
            if tracked is not None:
                tracked.val(j, at, acc, loss)
            if stop is not None:
                if stopped_at[j] is not None:
                    continue  # this seed is done; its best stays
                if best[j] is None or -loss > best[j][0] + stop.min_delta:
                    best[j], stale[j] = (-loss, at, jax.device_get(states[j])), 0
                else:
                    stale[j] += 1
                    if stale[j] >= stop.patience:
                        stopped_at[j] = at
            elif select == "best" and (best[j] is None or acc > best[j][0]):
                best[j] = (acc, at, jax.device_get(states[j]))
        eval_s[0] += time.perf_counter() - t_eval

    def plan():
        """(step, the K seeds' batches) from ``start`` on; the order is fixed by (seed, epoch)."""
        n = 0
        for epoch in range(epochs):
            schedules = [epoch_batches(lengths, buckets, cfg.batch_size, s, epoch) for s in seeds]
            for i in range(len(schedules[0])):
                n += 1
                if n > start:
                    yield n, [sched[i] for sched in schedules]

    def host_arrays(group):
        per_seed = [
            _batch_arrays(view, t_view, b, targets[j], labels, extras[j])
            for j, b in enumerate(group)
        ]
        return _stack_host(per_seed) if k > 1 else per_seed[0]

    # The next batch is padded and stacked on a helper thread while the step runs (numpy
    # releases the GIL); on CPU the step runs inline on this thread (w2s.runtime).
    with ThreadPoolExecutor(1, thread_name_prefix="w2s-batches") as pool, _cleared(bar):
        for (step, group), arrays in _prefetched(plan(), host_arrays, pool):
            if data_sharding is not None:
                arrays = jax.device_put(arrays, data_sharding)
            frac = np.float32((step - 1) / max(total, 1))
            t_step = time.perf_counter()
            args = (params, opt_state, arrays, frac) + ((t_params,) if teachers else ())
            if dropout:
                args = (params, opt_state, arrays, frac, t_params, run_seeds, np.int32(step))
            params, opt_state, stats = step_fn(*args)
            if group[0].length not in shapes_seen:  # a shape's first call includes compiling it
                shapes_seen.add(group[0].length)
                jax.block_until_ready(stats["loss"])
                compile_s += time.perf_counter() - t_step
            seen += int(sum(b.weight.sum() for b in group))
            pending.append(stats)
            if len(pending) >= 10 or step == total:
                _check_and_report(pending, step, bar, seen, t0, history, tracked)
                pending = []
            if manager is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                _save(manager, step, _checkpointed(params, trained is not None)[0], opt_state)
            if evaluate is not None and eval_every and step % eval_every == 0:
                run_eval(step, params)
                if stop is not None and all(s is not None for s in stopped_at):
                    break
    if pending:
        _check_and_report(pending, step, bar, seen, t0, history, tracked)
    jax.block_until_ready(params)
    if evaluate is not None and (not curves[0] or curves[0][-1][0] != step):
        run_eval(step, params)
    if tracked is not None:
        tracked.flush()
    seconds = time.perf_counter() - t0
    if manager is not None:
        manager.wait_until_finished()
        manager.close()
    results = []
    for j, (model, p) in enumerate(
        zip(models, _unstack(params, k) if k > 1 else [params], strict=True)
    ):
        chosen = step
        if best[j] is not None:
            _, chosen, p = best[j]
        nnx.update(model, p)
        results.append(
            TrainResult(
                params=p,
                steps=step,
                seconds=seconds,
                compile_seconds=compile_s,
                examples_per_second=seen / max(seconds - compile_s - eval_s[0], 1e-9),
                resumed_from=start,
                history=[_seed_record(h, j, k) for h in history],
                eval_curve=curves[j],
                selected_step=int(chosen),
                val_loss_curve=loss_curves[j],
                max_steps=total,
                stopped_at=stopped_at[j],
            )
        )
    return results


def _seed_record(rec: dict, j: int, k: int) -> dict:
    """One seed's view of a report made while K seeds trained together."""
    if k == 1:
        return rec
    return {**rec, "loss": rec["loss"][j], "losses": [row[j] for row in rec["losses"]]}


def _lead(rules, k: int):
    """Rules for parameters stacked along a leading seed axis (kept unsplit)."""
    if k == 1:
        return rules
    return tuple((pat, (None, *axes)) for pat, axes in rules)


def _train_key(cfg: TrainConfig) -> tuple:
    return (
        cfg.optimizer,
        cfg.weight_decay,
        cfg.warmup_frac,
        cfg.schedule,
        cfg.clip_norm,
        cfg.grad_accum,
        cfg.low_precision_update,
    )


class _Tracked:
    """Each seed's per-step scalars for its tracker: loss, accuracy, learning rate, examples/s.

    Sent at the loop's reports (every 10 steps), in step order; val scores wait for the report
    of their step, so that every backend sees steps only increase (W&B drops earlier ones).
    """

    def __init__(self, trackers: list, schedule, grad_accum: int):
        self.trackers = trackers
        self.schedule = schedule
        self.accum = max(grad_accum, 1)
        self.vals: dict[int, dict[int, dict]] = {}  # step -> seed -> val scalars
        self.last = (time.perf_counter(), 0)  # (time, examples seen) at the last report

    def lr(self, steps: np.ndarray) -> np.ndarray:
        """The rate of the update that step n (1-based) feeds: the schedule at the optimizer's
        count of updates before it (``optax.MultiSteps`` counts one per grad_accum steps)."""
        return np.broadcast_to(np.asarray(self.schedule((steps - 1) // self.accum)), steps.shape)

    def val(self, seed: int, step: int, score: float, loss: float) -> None:
        self.vals.setdefault(step, {})[seed] = {"val/score": score, "val/loss": loss}

    def report(self, step: int, losses: np.ndarray, accuracies: np.ndarray, seen: int) -> None:
        n = len(losses)
        steps = np.arange(step - n + 1, step + 1)
        self.flush(before=int(steps[0]))  # evaluated after their step's report
        lrs = self.lr(steps)
        losses, accuracies = losses.reshape(n, -1), accuracies.reshape(n, -1)
        now = time.perf_counter()
        rate = (seen - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, seen)
        for j, tracker in enumerate(self.trackers):
            if tracker is None:
                continue
            for i, s in enumerate(steps.tolist()):
                values = {
                    "train/loss": float(losses[i, j]),
                    "train/accuracy": float(accuracies[i, j]),
                    "train/lr": float(lrs[i]),
                }
                if i == n - 1:  # measured between reports, over all seeds (the first: compiling)
                    values["train/examples_per_second"] = rate
                values.update(self.vals.get(s, {}).get(j, {}))
                tracker.scalars(s, values)
        for s in [s for s in self.vals if s <= step]:
            del self.vals[s]

    def flush(self, before: int | None = None) -> None:
        """Val scores not yet sent (of steps before ``before``; all at the end of training)."""
        for s in sorted(s for s in self.vals if before is None or s < before):
            for j, values in self.vals.pop(s).items():
                if self.trackers[j] is not None:
                    self.trackers[j].scalars(s, values)


def _check_and_report(pending, step, bar, seen, t0, history, tracked=None):
    """Pull the last few steps' stats to the host (one sync per report), stop on NaN."""
    stats = jax.device_get(pending)
    losses = np.array([s["loss"] for s in stats])  # [steps] or [steps, seeds]
    if tracked is not None:  # before the NaN check: the curve up to the failure is kept
        tracked.report(step, losses, np.array([s["accuracy"] for s in stats]), seen)
    if not np.all(np.isfinite(losses)):
        bad = step - len(stats) + int(np.argmin(np.isfinite(losses).reshape(len(stats), -1).all(1)))
        raise FloatingPointError(
            f"training loss became {losses[~np.isfinite(losses)][0]} at step {bad + 1}"
        )
    rec = {
        "step": step,
        "loss": losses.mean(0).tolist(),
        "losses": losses.tolist(),
        "accuracy": float(np.mean([s["accuracy"] for s in stats])),
    }
    history.append(rec)
    if bar is not None:
        rate = seen / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(
            loss=f"{float(np.mean(rec['loss'])):.4f}",
            acc=f"{rec['accuracy']:.3f}",
            ex_s=f"{rate:.0f}",
        )
        bar.update(len(stats))


def _progress(total, start, desc, enabled):
    if not enabled or not is_lead():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=desc, leave=False, dynamic_ncols=True)


def _cleared(bar):
    """Close the bar (``leave=False``: its line is erased) also when training fails, so an
    error message or the next run's line does not land after a stale bar."""
    return nullcontext() if bar is None else bar


def _checkpointer(ckpt_dir: Path, every: int):
    if not every:
        return None
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        Path(ckpt_dir).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False),
    )


def _checkpointed(params, adapters: bool):
    """(what a checkpoint holds, what it leaves out): with LoRA adapters, only the adapters
    and the head; the frozen base is the pretrained model, rebuilt on resume."""
    if not adapters:
        return params, None
    return nnx.split_state(params, (nnx.LoRAParam, nnx.PathContains("head")), ...)


def _save(manager, step, params, opt_state):
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.StandardSave({"params": params, "opt_state": opt_state}))


def _restore(manager, step, params, opt_state):
    import orbax.checkpoint as ocp

    target = jax.tree.map(
        ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state}
    )
    return manager.restore(step, args=ocp.args.StandardRestore(target))


def predict(model: nnx.Module, view: View, batch_size: int, buckets: list[int]) -> np.ndarray:
    """Probabilities [N, C] for every example, one compilation per bucket."""
    graphdef, params = nnx.split(model)
    return predict_state(graphdef, params, view, batch_size, buckets)


def predict_state(graphdef, params, view: View, batch_size: int, buckets: list[int]) -> np.ndarray:
    """:func:`predict` for a model given as (graphdef, state), e.g. mid-training."""
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for b in eval_batches(view.lengths, buckets, batch_size):
        ids, mask = pad_rows(view.ids, b.index, b.length, view.pad_id)
        probs = predict_probs(graphdef, params, ids, mask)
        out.append((b.index[b.weight > 0], to_host(probs)[b.weight > 0]))
    n = len(view.ids)
    num_labels = out[0][1].shape[1]
    probs = np.zeros((n, num_labels), np.float32)
    for index, p in out:
        probs[index] = p
    return probs


def save_params(model: nnx.Module, path: Path) -> None:
    """The model's parameters as an orbax checkpoint (weak models, for live KD in later runs)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(Path(path).absolute(), nnx.state(model, nnx.Param), force=True)


def restore_params(model: nnx.Module, path: Path) -> nnx.Module:
    import orbax.checkpoint as ocp

    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model, nnx.Param))
    with ocp.StandardCheckpointer() as ckptr:
        nnx.update(model, ckptr.restore(Path(path).absolute(), target))
    return model
