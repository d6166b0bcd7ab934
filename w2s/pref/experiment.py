"""Preference weak -> ceiling -> w2s from the ``w2s`` command (``task.kind`` *_pairs).

``pref.stage=rm`` (``RMExperiment``), reward models on pairs, with the classification run
store, run ids and console:

- weak: the weak model's RM on A's ground-truth pairs; it keeps its weights and writes
  ``preferences.parquet`` (its BT probability P(chosen ≻ rejected) for every B and test pair);
- ceiling: the strong model's RM on B's ground-truth pairs;
- w2s: the strong model's RM on B with the weak probabilities as soft targets (``loss=xent``), or
  with the confidence auxiliary for pairs (``loss=logconf``); ``filter_q`` keeps the B pairs the
  weak RM is surest about.

``accuracy`` is pairwise accuracy on test (ties count half), so PGR and the summary read it as
they read classification accuracy. ``predictions.parquet`` holds each test pair as a two-class
row (``_pref_frame``: label 1, probs [1 − p, p]) with its two rewards.

``pref.stage=dpo`` (``DPOExperiment``) is the dSFT -> dDPO chain on a task whose chosen
responses are references: the language-model runs (weak SFT on A, ceiling SFT on B, w2s dSFT
on the weak answers, ``w2s.lm.experiment``), then per seed a ceiling DPO from the ceiling SFT
on B's ground-truth pairs and a dDPO from the dSFT on B's pairs ordered by the weak judge
(``w2s.pref.judge``), each against its own starting point as reference. Judged pairs are
stored in the weak run (``judged/``) and reference log-probs in the starting run
(``reference_logprobs/``), both keyed by what they depend on, and reused by reruns.
"""

from __future__ import annotations

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
from w2s.lm.data import GenData, format_prompts
from w2s.lm.experiment import LMExperiment, LMSpec
from w2s.lm.generations import answer
from w2s.lm.tasks import GenTask
from w2s.models.hub import resolve
from w2s.models.loading import build_config
from w2s.pref.dpo import DPOSettings, dpo_rows, reference_logprobs, train_dpo
from w2s.pref.judge import best_and_worst, lm_scores, order_pairs, rm_scores
from w2s.pref.pairs import load_pairs, split_pairs
from w2s.pref.reward import load_reward_model
from w2s.pref.rm_train import pair_correct, pair_rows, preference, score_pairs, train_rm
from w2s.store import RunStore, read_json, run_id, write_json, write_parquet
from w2s.timing import timed
from w2s.train.loop import restore_params, save_params

PREFERENCES = "preferences.parquet"
JUDGED = "judged"
REFERENCE = "reference_logprobs"


def rm_loss_name(cfg: Config) -> str:
    name = f"bt_{cfg.loss.name}"
    return name + (f"_q{cfg.filter_q:g}" if cfg.filter_q < 1 else "")


def dpo_name(cfg: Config, pairs: str) -> str:
    p = cfg.pref
    name = f"{pairs}_{'ipo' if p.loss == 'ipo' else 'dpo'}_b{p.beta:g}"
    if p.label_smoothing:
        name += f"_ls{p.label_smoothing:g}"
    if p.samples:
        name += f"_n{p.samples}_t{p.sample_temperature:g}"
    return name


class RMExperiment(StoredRuns):
    """Every seed's weak, ceiling and w2s reward-model runs of one ``w2s`` command."""

    artifacts = (PREFERENCES,)

    def __init__(self, cfg: Config, checked: bool = False):
        from transformers import AutoTokenizer

        if not checked:
            check_config(cfg, jax.default_backend())
        self.cfg = cfg
        self.store = RunStore(cfg.results_dir)
        self.cache_dir = Path(str(cfg.cache_dir)).expanduser()
        self.paths = {m.name: str(resolve(m.path)) for m in (cfg.weak, cfg.strong)}
        self.tokenizers = {n: AutoTokenizer.from_pretrained(p) for n, p in self.paths.items()}
        self.task = load_pairs(cfg.task, self.cache_dir, self.tokenizers[cfg.strong.name])
        self.console = Console(cfg)

    def splits(self, seed: int) -> dict[str, np.ndarray]:
        s = self.cfg.task.split_seed
        return make_splits(self.task, self.cfg.task, seed if s is None else s)

    def decoder(self, m: ModelConfig) -> bool:
        """Decoders score the last token of prompt + response (+ EOS); encoders a text pair."""
        pooling = m.pooling or build_config(self.paths[m.name], dict(m.overrides))[1].pooling
        return pooling == "last"

    def prompts(self, m: ModelConfig, index) -> list[str]:
        if m.name == self.cfg.strong.name:
            return [self.task.prompts[i] for i in index]
        raw = [self.task.data.prompts[i] for i in index]
        return format_prompts(self.tokenizers[m.name], raw, self.cfg.task.chat)

    def rows(self, m: ModelConfig, index):
        _, chosen, rejected, _ = split_pairs(self.task, index)
        tok = self.tokenizers[m.name]
        return pair_rows(tok, self.prompts(m, index), chosen, rejected, self.cfg.task.max_length,
                         decoder=self.decoder(m), eos_id=None)

    def load(self, m: ModelConfig):
        t = self.cfg.train
        return load_reward_model(self.paths[m.name], pooling=m.pooling, dtype=m.param_dtype,
                                 compute_dtype=m.compute_dtype, overrides=dict(m.overrides),
                                 attention=t.attention, remat=t.remat, scan_layers=t.scan_layers)

    def lr(self, m: ModelConfig) -> float:
        return self.cfg.train.lr if m.lr is None else m.lr

    # -- specs -------------------------------------------------------------------------------
    def gt_spec(self, kind: str, m: ModelConfig, seed: int, splits) -> LMSpec:
        rows = runs.rows_hash(self.task.ids, splits)
        identity = {**runs.gt_identity(self.cfg, kind, m, seed, rows), "objective": "reward"}
        rid = run_id(identity)
        weak, strong = (m.name, None) if kind == "weak" else (None, m.name)
        return LMSpec(kind, rid, runs.header(kind, rid, self.cfg, seed, weak, strong, "gt"),
                      identity, m, seed)

    def w2s_spec(self, seed: int, splits, weak_run: dict) -> LMSpec:
        cfg = self.cfg
        rows = runs.rows_hash(self.task.ids, splits)
        identity = {**runs.w2s_identity(cfg, seed, rows, [weak_run["run_id"]], None),
                    "objective": "reward"}
        rid = run_id(identity)
        header = runs.header("w2s", rid, cfg, seed, cfg.weak.name, cfg.strong.name,
                             rm_loss_name(cfg))
        ceiling = self.gt_spec("ceiling", cfg.strong, seed, splits).rid
        record = {"weak_run": weak_run["run_id"], "weak_runs": [weak_run["run_id"]],
                  "ceiling_run": ceiling, "supervisor_accuracy": weak_run["accuracy"]}
        return LMSpec("w2s", rid, header, identity, cfg.strong, seed, record)

    # -- one run -----------------------------------------------------------------------------
    def _targets(self, spec: LMSpec, splits) -> tuple[np.ndarray, np.ndarray]:
        """(rows of B or A trained on, P(chosen ≻ rejected) targets): 1 for ground truth, the
        weak RM's probabilities (read back from its run) for w2s."""
        if spec.kind != "w2s":
            index = splits["a" if spec.kind == "weak" else "b"]
            return index, np.ones(len(index))
        weak_dir = self.store.dir("weak", spec.record["weak_run"])
        prefs = pd.read_parquet(weak_dir / PREFERENCES)
        prob = dict(zip(prefs.loc[prefs["split"] == "b", "id"],
                        prefs.loc[prefs["split"] == "b", "prob"], strict=True))
        b_ids = [self.task.ids[i] for i in splits["b"]]
        missing = [i for i in b_ids if i not in prob]
        if missing:
            raise ValueError(f"weak run {spec.record['weak_run']}: {PREFERENCES} lacks "
                             f"{len(missing)} B pairs (first: {missing[0]!r})")
        p = np.array([prob[i] for i in b_ids])
        index = splits["b"]
        if self.cfg.filter_q < 1:  # the pairs the weak RM is surest about, either way
            k = max(1, int(round(self.cfg.filter_q * len(p))))
            keep = np.sort(np.argsort(-np.abs(p - 0.5), kind="stable")[:k])
            index, p = index[keep], p[keep]
        return index, p

    def _train_and_record(self, spec: LMSpec, splits, d: Path) -> dict:
        cfg, m = self.cfg, spec.model
        index, targets = self._targets(spec, splits)
        rows = self.rows(m, index)
        with timed() as t:
            model, history = train_rm(self.load(m), rows, targets, cfg.train, lr=self.lr(m),
                                      loss=cfg.loss if spec.kind == "w2s" else None,
                                      seed=spec.seed)
        with timed() as t_eval:
            rc, rr = score_pairs(model, self.rows(m, splits["test"]), cfg.train.eval_batch_size)
        correct = pair_correct(rc, rr)
        prob = preference(rc, rr)
        test_ids = [self.task.ids[i] for i in splits["test"]]
        if self.keeps_weights(spec):
            save_params(model, d / "weights")
        if spec.kind == "weak":
            b_rc, b_rr = score_pairs(model, self.rows(m, splits["b"]), cfg.train.eval_batch_size)
            frame = pd.concat([
                _pref_frame([self.task.ids[i] for i in splits["b"]], "b", b_rc, b_rr),
                _pref_frame(test_ids, "test", rc, rr)], ignore_index=True)
            write_parquet(d / PREFERENCES, frame)
        n = len(index)
        metrics = {
            **spec.header,
            **spec.record,
            "task_type": "preference",
            "accuracy": float(np.mean(correct)),
            "pairwise_accuracy": float(np.mean(correct)),
            "auroc": None,
            "n_test": len(test_ids),
            "n_train": n,
            "truncated_texts": int(rows.truncated),
            "train_seconds": t["seconds"],
            "compile_seconds": t["compile"],
            "examples_per_second": n * cfg.train.epochs / max(t["seconds"], 1e-9),
            "steps": len(history),
            "loss_history": [[s, round(v, 6)] for s, v in history],
            "mean_test_confidence": float(np.mean(np.maximum(prob, 1 - prob))),
            "n_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
            "predict_seconds_per_example": (t_eval["seconds"] - t_eval["compile"]) / len(test_ids),
            **provenance.code(),
            "models": {n: {"path": self.paths[n], "checkpoint": provenance.checkpoint(self.paths[n])}
                       for n in ([m.name] if spec.kind != "w2s"
                                 else [cfg.weak.name, cfg.strong.name])},
            "rows": runs.rows_hash(self.task.ids, splits),
            "dropped": dict(self.task.dropped),
            "config": runs.config_for_table(cfg),
        }
        predictions = _pref_frame(test_ids, "test", rc, rr)
        self.store.finish(d, metrics, predictions)
        return metrics


def _pref_frame(ids, split: str, rc, rr) -> pd.DataFrame:
    """Pairs as two-class rows, (rejected, chosen) preferred: ``probs`` = [1 − p, p] with
    p = P(chosen ≻ rejected) and ``label`` 1, so the analysis reads a reward model's
    predictions as it reads a binary classifier's (agreement, calibration, cascades); the
    rewards themselves ride along."""
    prob = preference(rc, rr)
    return pd.DataFrame({
        "id": list(ids), "split": split, "label": 1,
        "probs": [[1.0 - p, p] for p in prob], "prob": prob,
        "r_chosen": np.asarray(rc, np.float64), "r_rejected": np.asarray(rr, np.float64),
    })


def _dpo_identity(cfg: Config, kind: str) -> dict:
    """The DPO settings a run depends on: the ceiling trains on B's true pairs, so the judge
    and the AI-feedback settings are not its own (another judge reuses it)."""
    p = runs.identity(cfg.pref)
    if kind == "ceiling":
        for key in ("judge", "samples", "sample_temperature", "min_margin"):
            p.pop(key)
    return p


class DPOExperiment(LMExperiment):
    """The dSFT -> dDPO chain: the LM experiment's runs, then ceiling DPO and dDPO."""

    def load_task(self) -> GenTask:
        self.pairs = load_pairs(self.cfg.task, self.cache_dir,
                                self.tokenizers[self.cfg.strong.name])
        d = self.pairs.data
        answers = [a or [c] for a, c in zip(d.answers, d.chosen, strict=True)]
        return GenTask(GenData(d.name, d.ids, d.prompts, d.chosen, answers), self.pairs.prompts,
                       self.pairs.dropped)

    def keeps_weights(self, spec) -> bool:
        """The SFT runs are the DPO runs' starting points: they keep their weights."""
        return super().keeps_weights(spec) or spec.identity.get("stage") != "dpo"

    def _train_and_record(self, spec: LMSpec, splits, d: Path) -> dict:
        if spec.identity.get("stage") == "dpo":
            return self._dpo(spec, splits, d)
        return super()._train_and_record(spec, splits, d)

    # -- specs -------------------------------------------------------------------------------
    def dpo_spec(self, kind: str, seed: int, splits, start: dict, weak: dict,
                 ceiling_dpo: str | None = None) -> LMSpec:
        cfg = self.cfg
        rows = runs.rows_hash(self.task.ids, splits)
        pairs = "gt" if kind == "ceiling" else {"judge": cfg.pref.judge, "weak_run": weak["run_id"]}
        identity = {
            "kind": kind, "stage": "dpo",
            "data": runs.data_identity(cfg, seed, rows),
            "model": runs.identity(cfg.strong, labelled=True),
            "train": runs.train_identity(cfg, kind, cfg.strong),
            "seed": seed,
            "pref": _dpo_identity(cfg, kind),
            "start": [start["kind"], start["run_id"]],
            "pairs": pairs,
        }
        rid = run_id(identity)
        if kind == "ceiling":
            header = runs.header(kind, rid, cfg, seed, None, cfg.strong.name, dpo_name(cfg, "gt"))
            record = {"start_run": start["run_id"]}
        else:
            header = runs.header(kind, rid, cfg, seed, cfg.weak.name, cfg.strong.name,
                                 dpo_name(cfg, f"ddpo_{cfg.pref.judge}"))
            record = {"start_run": start["run_id"], "weak_run": weak["run_id"],
                      "weak_runs": [weak["run_id"]], "ceiling_run": ceiling_dpo,
                      "supervisor_accuracy": weak["accuracy"]}
        return LMSpec(kind, rid, header, identity, cfg.strong, seed, record)

    # -- pairs -------------------------------------------------------------------------------
    def gt_pairs(self, splits) -> pd.DataFrame:
        b = splits["b"]
        prompts, chosen, rejected, _ = split_pairs(self.pairs, b)
        return pd.DataFrame({"id": [self.task.ids[i] for i in b], "prompt": prompts,
                             "chosen": chosen, "rejected": rejected, "margin": np.inf})

    def judged_pairs(self, spec: LMSpec, splits, policy_dir: Path) -> tuple[pd.DataFrame, bool]:
        """B's pairs ordered by the weak judge (or, with ``pref.samples``, the judge's best and
        worst of the policy's samples), cached in the weak run; (pairs, reused)."""
        cfg, p = self.cfg, self.cfg.pref
        weak_dir = self.store.dir("weak", spec.record["weak_run"])
        key = run_id({"judge": p.judge, "rows": runs.rows_hash(self.task.ids, splits),
                      "min_margin": p.min_margin, "max_length": cfg.task.max_length,
                      "samples": p.samples, "temperature": p.sample_temperature,
                      "policy": spec.identity["start"] if p.samples else None,
                      "weak_rm": self._weak_rm(spec.seed, splits)["run_id"] if p.judge == "rm"
                      else None})
        path = weak_dir / JUDGED / f"{key}.parquet"
        if path.exists() and not cfg.force:
            return pd.read_parquet(path), True
        b = splits["b"]
        ids = [self.task.ids[i] for i in b]
        strong_prompts, chosen, rejected, _ = split_pairs(self.pairs, b)
        if p.samples:
            policy = restore_params(self.load(cfg.strong), policy_dir / "weights")
            tok = self.tokenizers[cfg.strong.name]
            got = answer(policy, tok, strong_prompts, max_new_tokens=cfg.task.max_new_tokens,
                         eos_id=self.eos[cfg.strong.name], batch_size=cfg.train.eval_batch_size,
                         samples=p.samples, temperature=p.sample_temperature, seed=spec.seed)
            del policy
            texts = [[a["text"] for a in per] for per in got]
            flat = [t for per in texts for t in per]
            reps = [len(per) for per in texts]
            scores = self._judge(spec.seed, splits, np.repeat(b, reps), flat)
            split_at = np.cumsum(reps)[:-1]
            frame = best_and_worst(ids, strong_prompts, texts, np.split(scores, split_at),
                                   p.min_margin)
        else:  # both sides scored in one pass of the weak model
            scores = self._judge(spec.seed, splits, np.concatenate([b, b]), chosen + rejected)
            frame = order_pairs(ids, strong_prompts, chosen, rejected, scores[: len(b)],
                                scores[len(b) :], p.min_margin)
        if len(frame) == 0:
            raise ValueError(f"the weak judge ({p.judge}) left no B pair (min_margin="
                             f"{p.min_margin}); lower pref.min_margin")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(path, frame)
        return frame, False

    def _weak_rm(self, seed: int, splits) -> dict:
        """The weak reward model on A's ground-truth pairs (``pref.judge=rm``), fitted or
        reused once per seed."""
        if not hasattr(self, "_rm"):
            self._rm = RMExperiment(self.cfg, checked=True)
            self._rm.console = self.console
            self._rm_runs: dict[int, dict] = {}
        if seed not in self._rm_runs:
            spec = self._rm.gt_spec("weak", self.cfg.weak, seed, splits)
            self._rm_runs[seed] = self._rm.fit(spec, splits)
        return self._rm_runs[seed]

    def _judge(self, seed: int, splits, index, responses: list[str]) -> np.ndarray:
        """The weak judge's score of each (prompt of row ``index[k]``, ``responses[k]``); it
        sees the weak model and the texts only."""
        cfg, m = self.cfg, self.cfg.weak
        raw = [self.task.data.prompts[i] for i in index]
        tok = self.tokenizers[m.name]
        if cfg.pref.judge == "rm":
            run = self._weak_rm(seed, splits)
            rm = restore_params(self._rm.load(m), self.store.dir("weak", run["run_id"]) / "weights")
            return rm_scores(rm, tok, self._rm.prompts(m, index), responses,
                             max_length=cfg.task.max_length, decoder=self._rm.decoder(m),
                             eos_id=None, batch_size=cfg.train.eval_batch_size)
        weak_run = self.gt_spec("weak", m, seed, splits).rid
        lm = restore_params(self.load(m), self.store.dir("weak", weak_run) / "weights")
        return lm_scores(lm, tok, format_prompts(tok, raw, cfg.task.chat), responses,
                         max_length=cfg.task.max_length, eos_id=self.eos[m.name],
                         batch_size=cfg.train.eval_batch_size)

    # -- one DPO run -------------------------------------------------------------------------
    def _dpo(self, spec: LMSpec, splits, d: Path) -> dict:
        cfg, m = self.cfg, spec.model
        tok, eos = self.tokenizers[m.name], self.eos[m.name]
        start_kind, start_rid = spec.identity["start"]
        start_dir = self.store.dir(start_kind, start_rid)
        if spec.kind == "ceiling":
            pairs, pairs_reused = self.gt_pairs(splits), None
        else:
            pairs, pairs_reused = self.judged_pairs(spec, splits, start_dir)
        rows = dpo_rows(tok, list(pairs["prompt"]), list(pairs["chosen"]),
                        list(pairs["rejected"]), cfg.task.max_length, eos_id=eos)
        policy = restore_params(self.load(m), start_dir / "weights")
        ref_key = run_id({"pairs": pd.util.hash_pandas_object(
            pairs[["id", "prompt", "chosen", "rejected"]], index=False).tolist(),
            "max_length": cfg.task.max_length})
        ref_path = start_dir / REFERENCE / f"{ref_key}.json"
        cached = None if cfg.force else read_json(ref_path)
        if cached is None:
            ref_c, ref_r = reference_logprobs(policy, rows, cfg.train.eval_batch_size)
            ref_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(ref_path, {"chosen": ref_c.tolist(), "rejected": ref_r.tolist()})
        else:
            ref_c, ref_r = np.asarray(cached["chosen"]), np.asarray(cached["rejected"])
        p = cfg.pref
        settings = DPOSettings(p.beta, p.label_smoothing, p.loss)
        lr = p.lr if p.lr is not None else self.lr(m)
        with timed() as t:
            policy, history = train_dpo(policy, rows, (ref_c, ref_r), cfg.train, lr=lr,
                                        settings=settings, epochs=p.epochs, seed=spec.seed)
        agree = None  # how often the weak judge ordered B's own pairs as the truth does
        if spec.kind == "w2s" and not p.samples:
            truth = self.gt_pairs(splits).set_index("id")["chosen"]
            agree = float(np.mean(truth.loc[pairs["id"]].to_numpy() == pairs["chosen"].to_numpy()))
        n = len(pairs)
        trained = {
            "n_train": n,
            "n_pairs": n,
            "judge_agreement": agree,
            "pairs_reused": pairs_reused,
            "reference_reused": cached is not None,
            "truncated_references": int(rows.chosen.truncated + rows.rejected.truncated),
            "train_seconds": t["seconds"],
            "compile_seconds": t["compile"],
            "examples_per_second": n * p.epochs / max(t["seconds"], 1e-9),
        }
        return self.record(spec, splits, d, policy, history, trained)

    # -- the experiment ----------------------------------------------------------------------
    def run(self) -> pd.DataFrame:
        """Per seed: weak; ceiling SFT and its DPO; dSFT and its dDPO (test exact match)."""
        cfg, out = self.cfg, []  # check_config has made sure loss=dsft
        for seed in cfg.seeds:
            splits = self.splits(seed)
            weak = self.fit(self.gt_spec("weak", cfg.weak, seed, splits), splits)
            ceiling = self.fit(self.gt_spec("ceiling", cfg.strong, seed, splits), splits)
            dsft = self.fit(self.w2s_spec(seed, splits, weak), splits)
            c_dpo = self.fit(self.dpo_spec("ceiling", seed, splits, ceiling, weak), splits)
            ddpo = self.fit(self.dpo_spec("w2s", seed, splits, dsft, weak, c_dpo["run_id"]),
                            splits)
            out.append({
                "seed": seed, "weak": weak["accuracy"], "weak_run_id": weak["run_id"],
                "ceiling": ceiling["accuracy"], "ceiling_run_id": ceiling["run_id"],
                "w2s": dsft["accuracy"], "w2s_run_id": dsft["run_id"],
                "ceiling_dpo": c_dpo["accuracy"], "ceiling_dpo_run_id": c_dpo["run_id"],
                "w2s_dpo": ddpo["accuracy"], "w2s_dpo_run_id": ddpo["run_id"],
            })
        return pd.DataFrame(out)

