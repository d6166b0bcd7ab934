"""Language-model weak -> ceiling -> w2s from the ``w2s`` command (generative tasks).

The classification orchestrator's counterpart for ``task.kind`` bigbench_gen | local_gen, with
the same run store, run ids (``w2s.runs``), reuse, console lines and summary:

- weak: SFT of the weak LM on A's references; it keeps its weights and writes
  ``generations.parquet``: its answers to B's prompts (``loss.samples`` each, at
  ``loss.sample_temperature``; the w2s runs' only supervision) and to the test prompts.
- ceiling: SFT of the strong LM on B's references.
- w2s (``loss.name``): ``dsft``, SFT on the weak answers read back from the weak run;
  ``token_kd``, the strong LM matches the frozen weak LM's next-token distributions on those
  answers (its weights read back from the weak run), ``loss.on_policy`` of the batches on the
  student's own samples; ``loss.aux=self`` adds self-training on the student's own greedy
  answers under the alpha schedule; ``filter_q`` keeps the B prompts whose first weak answer
  is the most confident.

``accuracy`` in a generative run's ``metrics.json`` is exact match on test (``w2s.lm.metrics``),
so PGR and the summary read it as they read classification accuracy; ``nll`` is the mean
reference-token NLL. ``predictions.parquet`` holds one row per test prompt: id, split, text,
correct, confidence (mean token log-probability of the answer), nll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import pandas as pd
from flax import nnx

from w2s import provenance, runs
from w2s.checks import check_config
from w2s.config import Config, ModelConfig
from w2s.console import Console
from w2s.data import make_splits
from w2s.fitting import StoredRuns
from w2s.lm.data import format_prompts, sft_tokenize
from w2s.lm.generations import answer, generations_frame, write_generations
from w2s.lm.runs import most_confident
from w2s.lm.step import KD, SelfTraining
from w2s.lm.tasks import load_generative, split_rows
from w2s.lm.train import OnPolicy, evaluate, train_lm
from w2s.models import load_lm
from w2s.models.hub import resolve
from w2s.store import RunStore, run_id
from w2s.timing import timed
from w2s.train.loop import restore_params, save_params

log = logging.getLogger("w2s")

GENERATIONS = "generations.parquet"


def lm_loss_name(cfg: Config) -> str:
    """The w2s loss as tables name it: the loss, its divergence and extras, the filter."""
    loss = cfg.loss
    name = "dsft" if loss.name == "dsft" else f"token_kd_{loss.divergence}_T{loss.temperature:g}"
    if loss.name == "token_kd" and loss.on_policy > 0:
        name += f"_onpolicy{loss.on_policy:g}"
    if loss.samples > 1 or loss.sample_temperature > 0:
        name += f"_n{loss.samples}_t{loss.sample_temperature:g}"
    if loss.aux == "self" and loss.alpha_max > 0:
        name += f"+self_{loss.alpha_schedule}{loss.alpha_max:g}"
    if cfg.filter_q < 1:
        name += f"_q{cfg.filter_q:g}"
    return name


@dataclass
class LMSpec:
    kind: str
    rid: str
    header: dict
    identity: dict
    model: ModelConfig
    seed: int
    record: dict = field(default_factory=dict)


class LMExperiment(StoredRuns):
    """Every seed's weak, ceiling and w2s LM runs of one ``w2s`` command."""

    artifacts = (GENERATIONS,)

    def __init__(self, cfg: Config):
        from transformers import AutoTokenizer

        check_config(cfg, jax.default_backend())  # before anything loads or trains
        self.cfg = cfg
        self.store = RunStore(cfg.results_dir)
        self.cache_dir = Path(str(cfg.cache_dir)).expanduser()
        self.paths = {m.name: str(resolve(m.path)) for m in (cfg.weak, cfg.strong)}
        self.tokenizers = {n: AutoTokenizer.from_pretrained(p) for n, p in self.paths.items()}
        self.eos = {}
        for name, tok in self.tokenizers.items():
            if tok.eos_token_id is None:
                raise ValueError(f"model {name} ({self.paths[name]}): its tokenizer has no EOS "
                                 "token, so generated answers cannot end")
            self.eos[name] = int(tok.eos_token_id)
        self.task = self.load_task()
        self.console = Console(cfg)
        if cfg.train.checkpoint_every:
            log.warning("train.checkpoint_every=%d: language-model runs write no mid-run "
                        "checkpoints yet; a stopped run trains again from the start",
                        cfg.train.checkpoint_every)

    # -- data --------------------------------------------------------------------------------
    def load_task(self):
        """Which rows exist (drops, dedup) is decided with the strong model's tokenizer."""
        return load_generative(self.cfg.task, self.cache_dir, self.tokenizers[self.cfg.strong.name])

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        s = self.cfg.task.split_seed
        return make_splits(self.task, self.cfg.task, seed if s is None else s)

    def rows(self, m: ModelConfig, index: np.ndarray):
        """(prompts formatted for ``m``'s tokenizer, references, accepted answers)."""
        if m.name == self.cfg.strong.name:
            return split_rows(self.task, index)
        _, refs, answers = split_rows(self.task, index)
        raw = [self.task.data.prompts[i] for i in index]
        return format_prompts(self.tokenizers[m.name], raw, self.cfg.task.chat), refs, answers

    def load(self, m: ModelConfig):
        t = self.cfg.train
        return load_lm(self.paths[m.name], m.param_dtype, compute_dtype=m.compute_dtype,
                       overrides=dict(m.overrides), attention=t.attention, remat=t.remat,
                       scan_layers=t.scan_layers)

    def lr(self, m: ModelConfig) -> float:
        return self.cfg.train.lr if m.lr is None else m.lr

    # -- specs -------------------------------------------------------------------------------
    def gt_spec(self, kind: str, m: ModelConfig, seed: int, splits) -> LMSpec:
        rows = runs.rows_hash(self.task.ids, splits)
        identity = runs.gt_identity(self.cfg, kind, m, seed, rows)
        loss = self.cfg.loss
        if kind == "weak" and (loss.samples, loss.sample_temperature) != (1, 0.0):
            # its stored answers to B are these samples: another setting is another weak run
            # (the greedy default leaves the id as it was)
            identity["generations"] = {"samples": loss.samples,
                                       "temperature": loss.sample_temperature}
        rid = run_id(identity)
        weak, strong = (m.name, None) if kind == "weak" else (None, m.name)
        return LMSpec(kind, rid, runs.header(kind, rid, self.cfg, seed, weak, strong, "gt"),
                      identity, m, seed)

    def w2s_spec(self, seed: int, splits, weak_run: dict) -> LMSpec:
        cfg = self.cfg
        rows = runs.rows_hash(self.task.ids, splits)
        identity = runs.w2s_identity(cfg, seed, rows, [weak_run["run_id"]], None)
        rid = run_id(identity)
        header = runs.header("w2s", rid, cfg, seed, cfg.weak.name, cfg.strong.name,
                             lm_loss_name(cfg))
        record = {
            "weak_run": weak_run["run_id"],
            "weak_runs": [weak_run["run_id"]],
            "ceiling_run": runs.gt_run_id(cfg, "ceiling", cfg.strong, seed, rows),
            "supervisor_accuracy": weak_run["accuracy"],
        }
        return LMSpec("w2s", rid, header, identity, cfg.strong, seed, record)

    # -- one run ---------------------------------------------------------------------------
    def _train_rows(self, spec: LMSpec, splits):
        """(prompts, targets, kept B rows): references of A or B, or the weak answers to B."""
        if spec.kind != "w2s":
            prompts, refs, _ = self.rows(spec.model, splits["a" if spec.kind == "weak" else "b"])
            return prompts, refs, None
        b_ids = [self.task.ids[i] for i in splits["b"]]
        gen = pd.read_parquet(self.store.dir("weak", spec.record["weak_run"]) / GENERATIONS)
        gen = gen[gen["split"] == "b"]
        by_id = {i: g.sort_values("sample") for i, g in gen.groupby("id", sort=False)}
        missing = [i for i in b_ids if i not in by_id]
        if missing:
            raise ValueError(f"weak run {spec.record['weak_run']}: {GENERATIONS} lacks answers "
                             f"to {len(missing)} B prompts (first: {missing[0]!r})")
        answers = [by_id[i].to_dict("records") for i in b_ids]
        keep = most_confident(answers, self.cfg.filter_q)
        prompts_b, _, _ = self.rows(spec.model, splits["b"])
        prompts, texts = [], []
        for i in keep:
            for a in answers[i]:
                prompts.append(prompts_b[i])
                texts.append(a["text"])
        return prompts, texts, keep

    def _train_and_record(self, spec: LMSpec, splits, d: Path) -> dict:
        cfg, m = self.cfg, spec.model
        tok, eos = self.tokenizers[m.name], self.eos[m.name]
        prompts, targets, kept = self._train_rows(spec, splits)
        rows = sft_tokenize(tok, prompts, targets, cfg.task.max_length, eos_id=eos)
        kw = {}
        if spec.kind == "w2s" and cfg.loss.name == "token_kd":
            teacher = restore_params(self.load(cfg.weak),
                                     self.store.dir("weak", spec.record["weak_run"]) / "weights")
            kw = {"teacher": teacher, "kd": KD(cfg.loss.divergence, cfg.loss.temperature,
                                               cfg.loss.js_beta, cfg.loss.skew)}
            if cfg.loss.on_policy > 0:
                kw["on_policy"] = OnPolicy(cfg.loss.on_policy, cfg.task.max_new_tokens, eos)
        if spec.kind == "w2s" and cfg.loss.aux == "self" and cfg.loss.alpha_max > 0:
            kw.update(aux=SelfTraining(cfg.loss.alpha_max, cfg.loss.alpha_schedule,
                                       cfg.loss.warmup_frac),
                      aux_max_new_tokens=cfg.task.max_new_tokens, eos_id=eos)
        with timed() as t:
            result = train_lm(self.load(m), rows, cfg.train, lr=self.lr(m), seed=spec.seed, **kw)
        n_train = len(rows.input_ids)
        trained = {
            "n_train": n_train,
            "n_train_prompts": len(kept) if kept is not None else n_train,
            "truncated_references": int(rows.truncated),
            "train_seconds": t["seconds"],
            "compile_seconds": t["compile"],
            "examples_per_second": n_train * cfg.train.epochs / max(t["seconds"], 1e-9),
        }
        return self.record(spec, splits, d, result.lm, result.loss_history, trained)

    def record(self, spec: LMSpec, splits, d: Path, lm, history, trained: dict) -> dict:
        """Score the trained LM on test (greedy exact match, reference NLL), keep what later
        runs read (weights, the weak run's generations), and write metrics and predictions."""
        cfg, m = self.cfg, spec.model
        tok, eos = self.tokenizers[m.name], self.eos[m.name]
        prompts_t, refs_t, answers_t = self.rows(m, splits["test"])
        with timed() as t_eval:  # greedy answers and reference NLL: a cascade's cost per call
            test = evaluate(lm, tok, prompts_t, refs_t, answers_t,
                            max_length=cfg.task.max_length,
                            max_new_tokens=cfg.task.max_new_tokens, eos_id=eos,
                            batch_size=cfg.train.eval_batch_size)
        test_ids = [self.task.ids[i] for i in splits["test"]]
        if self.keeps_weights(spec):
            save_params(lm, d / "weights")
        if spec.kind == "weak":
            self._write_generations(lm, spec, splits, d, test_ids, prompts_t, test["answers"])
        metrics = {
            **spec.header,
            **spec.record,
            "task_type": "generative",
            "accuracy": test["exact_match"],
            "exact_match": test["exact_match"],
            "nll": test["nll"],
            "auroc": None,
            "n_test": test["n"],
            **trained,
            "steps": len(history),
            "loss_history": [[s, round(v, 6)] for s, v in history],
            "mean_test_confidence": float(np.mean(test["confidence"])),
            "n_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(lm, nnx.Param)))),
            "predict_seconds_per_example": (t_eval["seconds"] - t_eval["compile"]) / test["n"],
            **provenance.code(),
            "models": {n: {"path": self.paths[n], "checkpoint": provenance.checkpoint(self.paths[n])}
                       for n in ([m.name] if spec.kind != "w2s"
                                 else [cfg.weak.name, cfg.strong.name])},
            "rows": runs.rows_hash(self.task.ids, splits),
            "dropped": dict(self.task.dropped),
            "config": runs.config_for_table(cfg),
        }
        predictions = pd.DataFrame({
            "id": test_ids,
            "split": "test",
            "text": test["texts"],
            "correct": np.asarray(test["correct"], bool),
            "confidence": np.asarray(test["confidence"], np.float64),
            "nll": np.asarray(test["row_nll"], np.float64),
        })
        self.store.finish(d, metrics, predictions)
        return metrics

    def _write_generations(self, lm, spec, splits, d: Path, test_ids, test_prompts,
                           test_answers) -> None:
        """The weak LM's answers to B (the supervision) and its greedy test answers (those it
        was scored on)."""
        cfg, m = self.cfg, spec.model
        tok, eos = self.tokenizers[m.name], self.eos[m.name]
        prompts_b, _, _ = self.rows(m, splits["b"])
        b_ids = [self.task.ids[i] for i in splits["b"]]
        b = answer(lm, tok, prompts_b, max_new_tokens=cfg.task.max_new_tokens, eos_id=eos,
                   batch_size=cfg.train.eval_batch_size, samples=cfg.loss.samples,
                   temperature=cfg.loss.sample_temperature, seed=spec.seed)
        frame = pd.concat([generations_frame(b_ids, "b", prompts_b, b),
                           generations_frame(test_ids, "test", test_prompts, test_answers)],
                          ignore_index=True)
        write_generations(d / GENERATIONS, frame)

