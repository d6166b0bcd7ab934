"""Performance gap recovered (PGR): pairing w2s runs with their weak and ceiling runs, and
aggregating over seeds.

PGR = (acc_w2s − acc_weak) / (acc_ceiling − acc_weak) (Burns et al. 2023), also from AUROC.
Gap policy: when the ceiling does not beat the weak model by more than ``eps`` the ratio is
meaningless (it explodes or flips sign), so PGR is NaN, the row keeps ``gap_ok=False``, and the
aggregate counts it in ``n_flagged`` instead of dropping it silently. `flag_tiny_gaps` also flags
a gap below k standard errors of the paired test difference (default k = 2): a ratio of noise.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from analysis.predictions import PredictionStore, align, read_weak_soft
from analysis.runs import json_field
from analysis.stats import (
    BOOTSTRAP_SEED,
    CI_LEVEL,
    GAP_SE_K,
    N_RESAMPLES,
    grouped_two_level_bootstrap,
    joint_pattern_counts,
    paired_gap_se_counts,
    pgr_example_bootstrap,
    t_interval,
    tiny_gap,
)

PAIR_KEYS = ("task", "weak_model", "strong_model", "loss")
# Config keys that never change a result (display, checkpointing, eval batching): never a reason
# to split a table row even when they differ between runs.
COSMETIC_KEYS = (
    "train.progress",
    "train.checkpoint_every",
    "train.eval_batch_size",
    "train.keep_checkpoints",
)
AGGREGATION_NOTE = (
    "PGR = (acc_w2s − acc_weak)/(acc_ceiling − acc_weak) per seed; shown: the mean over seeds "
    "with a 95% Student-t interval over seeds, mean ± t(0.975, n−1)·sd/√n (with one seed: a "
    "bootstrap over its test examples, resampled jointly for weak, ceiling and w2s), and the "
    "median over seeds. 2-level: a bootstrap over seeds, then over test examples within each drawn "
    "seed ({n_resamples} resamples). Seeds whose ceiling − weak gap is ≤ eps={eps:g} or below "
    "{k:g} standard errors of the paired test difference are flagged, counted, and left out of "
    "the PGR aggregates (not out of the accuracies)."
)


def pgr(acc_w2s, acc_weak, acc_ceiling, eps: float = 0.0):
    """PGR, NaN where the ceiling–weak gap is ≤ ``eps``. Works on scalars and arrays."""
    acc_w2s, acc_weak, acc_ceiling = (
        np.asarray(x, dtype=float) for x in (acc_w2s, acc_weak, acc_ceiling)
    )
    gap = acc_ceiling - acc_weak
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(gap > eps, (acc_w2s - acc_weak) / gap, np.nan)
    return float(out) if out.ndim == 0 else out


def agreement(weak: np.ndarray, w2s: np.ndarray) -> float:
    """Share of examples on which the w2s model's prediction equals the weak model's: from
    probabilities ``[n, k]`` (argmax) or from predictions ``[n]`` (classes, or a generative
    run's normalised answers)."""
    if len(weak) == 0:
        return float("nan")
    weak, w2s = (x.argmax(axis=1) if x.ndim == 2 else x for x in (weak, w2s))
    return float(np.mean(weak == w2s))


def _pick(candidates: list[dict], w2s: dict, group_keys: list[str]) -> tuple[dict | None, int]:
    """Prefer a partner that agrees with the w2s run on the user's group keys, then the first id."""
    if not candidates:
        return None, 0
    if len(candidates) > 1 and group_keys:
        same = [c for c in candidates if all(c.get(k) == w2s.get(k) for k in group_keys)]
        candidates = same or candidates
    return min(candidates, key=lambda c: c["run_id"]), len(candidates)


def varying_config_keys(runs: pd.DataFrame, ignore: list[str] | None = None) -> list[str]:
    """Config columns whose value differs between w2s runs of one (task, weak, strong, loss).

    Such runs are different experiments (a sweep), so one table row must not pool them as if
    they were more seeds. Cosmetic keys, keys in ``ignore`` and aliases of the seed (a key equal
    to the run's seed everywhere) are left out; a key missing from some runs counts as a value.
    """
    w2s = runs[runs["kind"] == "w2s"]
    skip = {*COSMETIC_KEYS, *(k.removeprefix("config.") for k in ignore or [])}
    cols = [c for c in w2s.columns if c.startswith("config.") and c[7:] not in skip]
    if w2s.empty or not cols:
        return []
    n_values = w2s.groupby(list(PAIR_KEYS), dropna=False)[cols].nunique(dropna=False).max()
    out = []
    for c in cols:
        values = w2s[c]
        if n_values[c] > 1 and not (values.notna().all() and (values == w2s["seed"]).all()):
            out.append(c)
    return out


def _of_kind(by_id: dict, run_id: object, kind: str) -> dict | None:
    run = by_id.get(run_id) if isinstance(run_id, str) else None
    return run if run is not None and run["kind"] == kind else None


def _weak_partners(
    w: dict, by_id: dict, weak_by_key: dict, group_keys: list[str], notes: list[str]
) -> list[dict]:
    """The weak runs that supervised ``w``, by the ids it recorded; by key only for old runs.

    A recorded id that was not loaded leaves the run unpaired: a look-alike run (same task,
    model and seed, other settings) is not the supervision it was trained on.
    """
    recorded = json_field(w["weak_runs"])
    if recorded:
        found = [_of_kind(by_id, i, "weak") for i in recorded]
        missing = [i for i, r in zip(recorded, found, strict=True) if r is None]
        if missing:
            notes.append(f"recorded weak run {', '.join(map(str, missing))} not loaded")
            return []
        return found
    if w["weak_run"]:
        weak = _of_kind(by_id, w["weak_run"], "weak")
        if weak is not None:
            return [weak]
        notes.append(f"weak_run {w['weak_run']} not loaded; matched by key")
    else:
        notes.append("weak matched by (task, weak_model, seed): no weak_runs recorded")
    weak, n = _pick(weak_by_key.get((w["task"], w["weak_model"], w["seed"]), []), w, group_keys)
    if n > 1:
        notes.append(f"{n} weak candidates")
    return [weak] if weak is not None else []


def _ceiling_partner(
    w: dict, by_id: dict, ceiling_by_key: dict, group_keys: list[str], notes: list[str]
) -> dict | None:
    """The ceiling run ``w`` recorded in ``ceiling_run``; by key only for old runs."""
    if w["ceiling_run"]:
        ceiling = _of_kind(by_id, w["ceiling_run"], "ceiling")
        if ceiling is None:
            notes.append(f"recorded ceiling run {w['ceiling_run']} not loaded")
        return ceiling
    notes.append("ceiling matched by (task, strong_model, seed): no ceiling_run recorded")
    key = (w["task"], w["strong_model"], w["seed"])
    ceiling, n = _pick(ceiling_by_key.get(key, []), w, group_keys)
    if n > 1:
        notes.append(f"{n} ceiling candidates")
    return ceiling


def _supervision(w: dict, weaks: list[dict], notes: list[str]) -> dict:
    """acc_weak of one w2s run: the supervision it actually trained on.

    With several weak supervisors that is their combined labels, scored on test by the pipeline
    (``supervisor_accuracy``); its test probabilities are the w2s run's own ``weak_soft`` test
    rows (``supervisor_dir``). A single supervisor is the weak run itself.
    """
    members = json_field(w["supervisor_members"]) or [
        {"model": r["weak_model"], "run_id": r["run_id"], "accuracy": r["accuracy"]} for r in weaks
    ]
    n_recorded = len(json_field(w["weak_runs"]) or [])
    n = max(n_recorded, len(members), 1 + str(w["weak_model"]).count("+"))
    combined = n > 1
    acc = _first_number(w["supervisor_accuracy"])
    if not np.isfinite(acc):
        if combined:
            notes.append(f"{n} supervisors but no supervisor_accuracy recorded: PGR undefined")
        elif weaks:
            acc = float(weaks[0]["accuracy"])
    text = ""
    if combined:
        parts = [f"{m.get('model')} {_fmt3(m.get('accuracy'))}" for m in members]
        text = "; ".join([*parts, f"combined {_fmt3(acc)}"])
    return {
        "supervisor": f"combined ({n})" if combined else "weak run",
        "acc_weak": acc,
        "auroc_weak": weaks[0]["auroc"] if weaks and not combined else np.nan,
        "supervisors": text,
        "supervisor_members": json.dumps(members, sort_keys=True),
        "supervisor_dir": w["run_dir"] if combined else None,
    }


def _fmt3(x: object) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) and math.isfinite(x) else "?"


def _provenance(used: list[dict]) -> str:
    """JSON list of the code and checkpoints behind each run used for one number."""
    entries = []
    for r in used:
        models = json_field(r["models"]) or {}
        entries.append(
            {
                "run_id": r["run_id"],
                "code_version": r["code_version"],
                "git_commit": r["git_commit"],
                "git_dirty": r["git_dirty"] if isinstance(r["git_dirty"], bool) else None,
                "checkpoints": {
                    name: m.get("checkpoint") for name, m in models.items() if isinstance(m, dict)
                },
            }
        )
    return json.dumps(entries, sort_keys=True)


def describe_code(entries: list[dict]) -> str:
    """``same``, ``MIXED (2 commits)``, ``MIXED (1 unrecorded)``, ``unknown`` for a set of runs.

    A run that records neither git_commit nor code_version predates provenance recording, so
    next to recorded runs it is counted as other code. ``dirty`` says some run had uncommitted
    changes, so an equal commit does not guarantee equal code.
    """
    entries = list({e["run_id"]: e for e in entries}.values())
    commits = {e["git_commit"] for e in entries if e["git_commit"]}
    versions = {e["code_version"] for e in entries if e["code_version"]}
    unknown = sum(not e["git_commit"] and not e["code_version"] for e in entries)
    if unknown == len(entries):
        return "unknown"
    detail = []
    if len(commits) > 1:
        detail.append(f"{len(commits)} commits")
    elif len(versions) > 1:
        detail.append(f"{len(versions)} versions")
    if unknown:
        detail.append(f"{unknown} unrecorded")
    dirty = any(e["git_dirty"] is True for e in entries)
    if detail:
        return f"MIXED ({'; '.join(detail + (['dirty'] if dirty else []))})"
    return "same (dirty)" if dirty else "same"


def describe_checkpoints(entries: list[dict]) -> str:
    """``same``, or ``MIXED (gpt2: 2)`` when runs loaded different checkpoints of one model."""
    seen: dict[str, set] = {}
    for e in {e["run_id"]: e for e in entries}.values():
        for name, ckpt in (e.get("checkpoints") or {}).items():
            if ckpt:
                seen.setdefault(name, set()).add(ckpt)
    if not seen:
        return "unknown"
    mixed = [f"{name}: {len(c)}" for name, c in sorted(seen.items()) if len(c) > 1]
    return f"MIXED ({'; '.join(mixed)})" if mixed else "same"


def pair_runs(
    runs: pd.DataFrame, group_keys: list[str] | None = None, eps: float = 0.0
) -> pd.DataFrame:
    """One row per finished w2s run with its weak and ceiling partners and per-seed PGR.

    Partners are the runs the w2s run recorded: ``weak_runs`` (in supervisor order; ``weak_run``
    is the first) and ``ceiling_run``. Only runs that predate those fields are matched by
    (task, model, seed), preferring equal group-key values, then the smallest run_id; the
    fallback is noted in ``note``. acc_weak is the supervision actually trained on (see
    `_supervision`). Unpaired w2s runs are kept with NaN PGR and ``paired=False``.
    """
    group_keys = list(group_keys or [])
    records = runs.to_dict("records")
    by_id = {r["run_id"]: r for r in records}
    weak_by_key: dict[tuple, list[dict]] = {}
    ceiling_by_key: dict[tuple, list[dict]] = {}
    for r in records:
        if r["kind"] == "weak":
            weak_by_key.setdefault((r["task"], r["weak_model"], r["seed"]), []).append(r)
        elif r["kind"] == "ceiling":
            ceiling_by_key.setdefault((r["task"], r["strong_model"], r["seed"]), []).append(r)
    rows = []
    for w in (r for r in records if r["kind"] == "w2s"):
        notes: list[str] = []
        weaks = _weak_partners(w, by_id, weak_by_key, group_keys, notes)
        ceiling = _ceiling_partner(w, by_id, ceiling_by_key, group_keys, notes)
        weak = weaks[0] if weaks else None
        supervision = _supervision(w, weaks, notes)
        if weak is None:
            notes.append("no weak run")
        if ceiling is None:
            notes.append("no ceiling run")
        previous = _of_kind(by_id, w["previous_run"], "w2s")
        used = [w, *weaks, *([ceiling] if ceiling else []), *([previous] if previous else [])]
        provenance = _provenance(used)
        row = {k: w[k] for k in PAIR_KEYS}
        row.update({k: w.get(k) for k in group_keys})
        row.update(
            seed=w["seed"],
            w2s_run=w["run_id"],
            weak_run=weak["run_id"] if weak else None,
            ceiling_run=ceiling["run_id"] if ceiling else None,
            weak_runs=json.dumps([r["run_id"] for r in weaks]),
            weak_run_model=weak["weak_model"] if weak else None,
            w2s_dir=w["run_dir"],
            weak_dir=weak["run_dir"] if weak else None,
            ceiling_dir=ceiling["run_dir"] if ceiling else None,
            weak_params=_first_number(w["weak_params"], weak and weak["n_params"]),
            strong_params=_first_number(
                w["strong_params"], ceiling and ceiling["n_params"], w["n_params"]
            ),
            acc_weak=supervision.pop("acc_weak"),
            acc_ceiling=ceiling["accuracy"] if ceiling else np.nan,
            acc_w2s=w["accuracy"],
            auroc_weak=supervision.pop("auroc_weak"),
            auroc_ceiling=ceiling["auroc"] if ceiling else np.nan,
            auroc_w2s=w["auroc"],
            nll_weak=weak["nll"] if weak and supervision["supervisor"] == "weak run" else np.nan,
            nll_ceiling=ceiling["nll"] if ceiling else np.nan,
            nll_w2s=w["nll"],
            **supervision,
            weak_seconds=weak["predict_seconds_per_example"] if weak else np.nan,
            ceiling_seconds=ceiling["predict_seconds_per_example"] if ceiling else np.nan,
            backbone_change=w["backbone_change"],
            backbone_change_ceiling=ceiling["backbone_change"] if ceiling else np.nan,
            selected_step=w["selected_step"],
            n_duplicates_dropped=w["n_duplicates_dropped"],
            flags=run_flags({"w2s": w, "weak": weak, "ceiling": ceiling}),
            previous_run=w["previous_run"],
            code_version=w["code_version"],
            git_commit=w["git_commit"],
            code=describe_code(json.loads(provenance)),
            provenance=provenance,
            note="; ".join(notes),
        )
        rows.append(row)
    columns = [*PAIR_KEYS, *group_keys, "seed", "w2s_run", "weak_run", "ceiling_run"]
    pairs = pd.DataFrame(rows, columns=None if rows else columns)
    if pairs.empty:
        return pairs
    pairs["paired"] = (
        pairs["weak_run"].notna() & pairs["ceiling_run"].notna() & pairs["acc_weak"].notna()
    )
    pairs["gap"] = pairs["acc_ceiling"] - pairs["acc_weak"]
    pairs["gap_ok"] = pairs["paired"] & (pairs["gap"] > eps)
    pairs["pgr"] = pgr(pairs["acc_w2s"], pairs["acc_weak"], pairs["acc_ceiling"], eps)
    pairs["gap_auroc_ok"] = (pairs["auroc_ceiling"] - pairs["auroc_weak"]) > eps
    pairs["pgr_auroc"] = pgr(pairs["auroc_w2s"], pairs["auroc_weak"], pairs["auroc_ceiling"], eps)
    # generative runs: the same ratio from the reference NLL (lower is better, so negated)
    pairs["pgr_nll"] = pgr(-pairs["nll_w2s"], -pairs["nll_weak"], -pairs["nll_ceiling"], eps)
    pairs["agreement"] = np.nan
    pairs["pattern_counts"] = None
    return pairs.sort_values([*PAIR_KEYS, *group_keys, "seed", "w2s_run"], ignore_index=True)


def _first_number(*values) -> float:
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
            return float(v)
    return np.nan


def _pair_prediction_metrics(
    store: PredictionStore, row, w2s_result
) -> tuple[float, np.ndarray | None, str]:
    """Agreement and joint correctness counts of one w2s run, or a warning.

    The weak side is the supervision actually trained on: for several supervisors, their
    combined test probabilities from the w2s run's ``weak_soft`` column. Without those the
    agreement falls back to the first weak run, and no correctness counts are returned, since
    they would not match acc_weak (the combined supervisor's accuracy).
    """
    if isinstance(w2s_result, Exception):
        return np.nan, None, ""  # the store lists unreadable files
    weak, ceiling, w2s = store.get(row.weak_dir), store.get(row.ceiling_dir), w2s_result.get("test")
    warning, counts_ok = "", True
    if isinstance(row.supervisor_dir, str):
        supervisor = read_weak_soft(row.supervisor_dir, "test")
        if supervisor is not None:
            weak = supervisor
        else:
            counts_ok = False
            warning = (
                f"w2s run {row.w2s_run}: no weak_soft test rows for its combined supervisor; "
                "agreement is with its first weak run, no example bootstrap"
            )
    if weak is None or ceiling is None or w2s is None:
        return np.nan, None, f"w2s run {row.w2s_run}: test predictions missing for it or a partner"
    try:
        weak, ceiling, w2s = align(weak, ceiling, w2s)
    except ValueError as e:
        return np.nan, None, f"w2s run {row.w2s_run}: {e}"
    counts = joint_pattern_counts(weak.correct, ceiling.correct, w2s.correct) if counts_ok else None
    return agreement(weak.predicted, w2s.predicted), counts, warning


def add_prediction_metrics(pairs: pd.DataFrame, store: PredictionStore) -> list[str]:
    """Fill ``agreement`` and the joint correctness counts from test predictions, in place.

    Weak and ceiling predictions are cached (many w2s runs share them); w2s predictions are
    streamed and dropped, so memory stays flat however many runs there are. Returns warnings for
    pairs whose predictions could not be read or aligned.
    """
    if pairs.empty:
        return []
    paired = pairs[pairs["paired"]]
    store.prefetch(list(paired["weak_dir"]) + list(paired["ceiling_dir"]))
    rows_by_dir: dict[str, list] = {}
    cols = ["w2s_run", "w2s_dir", "weak_dir", "ceiling_dir", "supervisor_dir"]
    for row in paired[cols].itertuples():
        rows_by_dir.setdefault(row.w2s_dir, []).append(row)
    agree = pairs["agreement"].to_numpy(dtype=float, copy=True)
    counts = list(pairs["pattern_counts"])
    warnings = []
    for w2s_dir, result in store.stream(rows_by_dir):
        for row in rows_by_dir[w2s_dir]:
            a, c, warning = _pair_prediction_metrics(store, row, result)
            pos = pairs.index.get_loc(row.Index)
            agree[pos], counts[pos] = a, c
            if warning:
                warnings.append(warning)
    pairs["agreement"] = agree
    pairs["pattern_counts"] = counts
    return warnings


def flag_tiny_gaps(pairs: pd.DataFrame, k: float = GAP_SE_K, eps: float = 0.0) -> pd.DataFrame:
    """Flag seeds whose ceiling − weak gap is within test-set noise, in place; returns ``pairs``.

    A gap of 1.5 points on 1,000 examples is about one standard error: PGR divides by noise and
    can come out at any size or sign. ``gap_se`` is the SE of the paired difference on the same
    test examples, from the joint pattern counts (call after `add_prediction_metrics`). A paired
    seed keeps ``gap_ok`` when gap > eps and gap ≥ k·SE (without counts: the eps rule only);
    ``gap_flag`` says why not. A flagged seed's ``pgr`` stays in the per-run rows, but the
    aggregates leave it out. ``k = 0`` turns the SE rule off.
    """
    if pairs.empty:
        return pairs
    se = np.array(
        [np.nan if c is None else paired_gap_se_counts(c) for c in pairs["pattern_counts"]]
    )
    gap = pairs["gap"].to_numpy(dtype=float)
    tiny = np.array([tiny_gap(g, s, k, eps) for g, s in zip(gap, se, strict=True)], dtype=bool)
    with np.errstate(invalid="ignore"):
        below_eps = ~(gap > eps)
    pairs["gap_se"] = se
    pairs["gap_ok"] = pairs["paired"].to_numpy(dtype=bool) & ~tiny
    pairs["gap_flag"] = np.where(
        ~pairs["paired"].to_numpy(dtype=bool) | ~tiny,
        "",
        np.where(below_eps, f"gap ≤ {eps:g}", f"gap < {k:g} SE"),
    )
    return pairs


def _group_supervisors(members: list[str], acc_weak: np.ndarray) -> str:
    """Mean test accuracy of each supervisor and of their combination over a row's ensemble runs
    (``members``: their ``supervisor_members`` JSON, ``acc_weak``: combined accuracies)."""
    accs: dict[str, list[float]] = {}
    for text in members:
        for m in json.loads(text):
            accs.setdefault(str(m.get("model")), []).append(_first_number(m.get("accuracy")))
    parts = [f"{name} {_fmt3(float(np.nanmean(a)))}" for name, a in accs.items()]
    return "; ".join([*parts, f"combined {_fmt3(float(np.nanmean(acc_weak)))}"])


def add_group_columns(
    summary: pd.DataFrame, pairs: pd.DataFrame, group_keys: list[str] | None = None
) -> pd.DataFrame:
    """``summary`` (one row per table group) with provenance and supervision columns.

    ``code``: whether every run behind the row (w2s runs and their weak, ceiling and previous
    runs) records the same git commit and code version (`describe_code`); ``checkpoints``: the
    same for model checkpoints; ``backbone_change``: mean over the w2s runs; ``supervisors``:
    each supervisor's and the combined supervisor's mean test accuracy, for ensembles.
    """
    keys = [*PAIR_KEYS, *(group_keys or [])]
    extra = ["code", "checkpoints", "backbone_change", "supervisors", "flags"]
    if pairs.empty or summary.empty:
        return summary.assign(**{c: pd.Series(dtype=object) for c in extra})
    grouped = pairs.groupby(keys, dropna=False, sort=True)
    table = grouped.size().index.to_frame(index=False)
    codes = grouped.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(table) + 1))
    provenance = pairs["provenance"].to_numpy()
    combined = pairs["supervisor"].astype(str).str.startswith("combined").to_numpy()
    members = pairs["supervisor_members"].to_numpy()
    acc_weak = pairs["acc_weak"].to_numpy(dtype=float)
    code, checkpoints, supervisors = [], [], []
    for g in range(len(table)):
        rows = order[bounds[g] : bounds[g + 1]]
        entries = [e for text in provenance[rows] for e in json.loads(text)]
        code.append(describe_code(entries))
        checkpoints.append(describe_checkpoints(entries))
        ens = rows[combined[rows]]
        supervisors.append(
            _group_supervisors(list(members[ens]), acc_weak[ens]) if len(ens) else ""
        )
    table["code"], table["checkpoints"], table["supervisors"] = code, checkpoints, supervisors
    table["backbone_change"] = grouped["backbone_change"].mean().to_numpy()
    table["flags"] = grouped["flags"].agg(count_flags).to_numpy()
    out = summary.drop(columns=[c for c in extra if c in summary]).merge(
        table[[*keys, *extra]], on=keys, how="left", validate="one_to_one"
    )
    if len(out) != len(summary):
        raise AssertionError("group columns do not match the PGR groups")
    return out


def run_flags(runs: dict) -> str:
    """The diagnostics flags (``w2s.diagnostics``) of a w2s run and its partners, as
    ``kind:flag`` words (e.g. ``weak:near_uniform_predictions w2s:collapsed``)."""
    words = []
    for kind, run in runs.items():
        if run is None or not isinstance(run.get("flags"), str):
            continue
        words += [f"{kind}:{f}" for f in json_field(run["flags"]) or []]
    return " ".join(words)


def count_flags(flags: pd.Series) -> str:
    """How many of a group's seeds raised each flag: ``w2s:collapsed 3/3``."""
    counts: dict[str, int] = {}
    for text in flags.fillna(""):
        for word in set(str(text).split()):
            counts[word] = counts.get(word, 0) + 1
    return "; ".join(f"{w} {n}/{len(flags)}" for w, n in sorted(counts.items()))


def aggregate_pgr(
    pairs: pd.DataFrame,
    group_keys: list[str] | None = None,
    eps: float = 0.0,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> pd.DataFrame:
    """Per (task, weak, strong, loss, *group_keys): accuracies, PGR mean/median/intervals.

    PGR columns use the seeds with ``gap_ok`` (paired, and not flagged by the gap rules of
    `pair_runs` and `flag_tiny_gaps`); accuracies use every paired seed. ``n_seeds`` counts the
    seeds in the PGR columns, ``n_flagged`` the paired seeds left out, ``n_unpaired`` the runs
    missing a partner. ``pgr_ci_low/high``: with ``ci_method`` "t" a Student-t interval over
    seeds (n ≥ 2), "examples" a bootstrap over the test examples of a single seed, "none"
    otherwise. ``pgr_boot_low/high``: the two-level bootstrap (seeds, then test examples),
    where every paired seed of the group has pattern counts.
    """
    keys = [*PAIR_KEYS, *(group_keys or [])]
    if pairs.empty:
        return pd.DataFrame(columns=keys)
    ok = pairs["gap_ok"].astype(bool)
    pairs = pairs.assign(
        _flagged=pairs["paired"] & ~ok,
        _pgr=pairs["pgr"].where(ok),
        _gap_se=pairs["gap_se"] if "gap_se" in pairs else np.nan,
    )
    grouped = pairs.groupby(keys, dropna=False, sort=True)
    summary = grouped.agg(
        weak_params=("weak_params", "median"),
        strong_params=("strong_params", "median"),
        n_runs=("w2s_run", "size"),
        n_paired=("paired", "sum"),
        n_seeds=("_pgr", "count"),
        acc_weak=("acc_weak", "mean"),
        acc_ceiling=("acc_ceiling", "mean"),
        acc_w2s=("acc_w2s", "mean"),
        pgr_mean=("_pgr", "mean"),
        pgr_median=("_pgr", "median"),
        pgr_auroc_mean=("pgr_auroc", "mean"),
        pgr_auroc_median=("pgr_auroc", "median"),
        agreement=("agreement", "mean"),
        gap_se=("_gap_se", "mean"),
        n_flagged=("_flagged", "sum"),
        **({"pgr_nll_mean": ("pgr_nll", "mean")} if "pgr_nll" in pairs else {}),
    ).reset_index()
    summary["n_unpaired"] = summary["n_runs"] - summary["n_paired"]
    summary["gap_ok"] = summary["n_flagged"] == 0
    ci = np.full((len(summary), 2), np.nan)
    method = np.full(len(summary), "none", dtype=object)
    boot_groups, boot_keeps, boot_pos = [], [], []
    # per-group rows as numpy index arrays: pandas per-group indexing is slow with many groups
    codes = grouped.ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(summary) + 1))
    kept_pgr = pairs["_pgr"].to_numpy(dtype=float)
    is_paired = pairs["paired"].to_numpy(dtype=bool)
    counts = pairs["pattern_counts"].to_numpy(dtype=object)
    for pos in range(len(summary)):
        rows = order[bounds[pos] : bounds[pos + 1]]
        kept = rows[np.isfinite(kept_pgr[rows])]
        if len(kept) >= 2:
            ci[pos], method[pos] = t_interval(kept_pgr[kept], level), "t"
        elif len(kept) == 1 and counts[kept[0]] is not None:
            lo, hi, _ = pgr_example_bootstrap(counts[kept[0]], eps, n_resamples, level, seed)
            ci[pos], method[pos] = (lo, hi), "examples"
        paired = rows[is_paired[rows]]
        if len(kept) and all(counts[i] is not None for i in paired):
            boot_groups.append(np.stack([counts[i] for i in paired]))
            boot_keeps.append(np.isfinite(kept_pgr[paired]))
            boot_pos.append(pos)
    summary["pgr_ci_low"], summary["pgr_ci_high"] = ci[:, 0], ci[:, 1]
    summary["ci_method"] = method
    boot = np.full((len(summary), 2), np.nan)
    results = grouped_two_level_bootstrap(
        boot_groups, boot_keeps, n_resamples, level, seed, eps, accuracies=False
    )
    for pos, result in zip(boot_pos, results, strict=True):
        boot[pos] = result["pgr"]
    summary["pgr_boot_low"], summary["pgr_boot_high"] = boot[:, 0], boot[:, 1]
    return summary
