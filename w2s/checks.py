"""Settings that cannot work together, refused before anything loads or trains.

``check_config`` sees only the config (and, when it is about to run, JAX's backend), so every
shipped preset can be validated on any machine: a dry run or a test on CPU checks a GPU preset's
choices without executing them (``backend=None`` skips the checks that need the real machine).
"""

from __future__ import annotations

from w2s import tracking
from w2s.config import Config
from w2s.lm.divergences import check_token_divergence
from w2s.lm.tasks import is_generative
from w2s.models.attention import check_attention
from w2s.models.lora import GROUPS as LORA_GROUPS
from w2s.models.stack import check_remat
from w2s.pref.pairs import is_preference
from w2s.train.loop import SELECTS
from w2s.train.losses import step_loss

KINDS = ("weak", "ceiling", "w2s")


def compute_dtypes(cfg: Config) -> dict[str, str]:
    """Each model's compute dtype under the config key that sets it."""
    extra = {f"extra_weak[{i}]": m.compute_dtype for i, m in enumerate(cfg.extra_weak)}
    return {"weak": cfg.weak.compute_dtype, **extra, "strong": cfg.strong.compute_dtype}


def check_config(cfg: Config, backend: str | None = None) -> None:
    """Raise ValueError with one clear line for the first setting that cannot run."""
    t, tr = cfg.task, cfg.train
    for split, n in (("task.n_a", t.n_a), ("task.n_b", int(round(t.n_b * cfg.filter_q)))):
        if tr.batch_size > n:
            raise ValueError(
                f"train.batch_size={tr.batch_size} is larger than the {n} training examples "
                f"of {split}"
            )
    check_remat(tr.remat)
    check_attention(tr.attention, compute_dtypes(cfg), backend)
    if tr.select not in SELECTS:
        raise ValueError(f"train.select '{tr.select}' unknown; use one of {', '.join(SELECTS)}")
    if tr.select == "best" and not tr.eval_every:
        raise ValueError("train.select=best needs train.eval_every > 0 (steps between evals)")
    stop = tr.early_stop
    unknown = sorted(set(stop.runs) - set(KINDS))
    if unknown:
        raise ValueError(
            f"train.early_stop.runs: unknown kind(s) {unknown}; use weak, ceiling, w2s"
        )
    if stop.runs and (stop.patience < 1 or stop.max_epochs < 1 or stop.every < 0):
        raise ValueError(
            "train.early_stop needs patience >= 1, max_epochs >= 1 and every >= 0 "
            f"(got patience={stop.patience}, max_epochs={stop.max_epochs}, "
            f"every={stop.every}); runs=[] turns it off"
        )
    if stop.runs and t.n_val < 1:
        raise ValueError(
            f"train.early_stop.runs={list(stop.runs)} stops on the val loss, but "
            "task.n_val=0; set task.n_val or train.early_stop.runs=[]"
        )
    unknown = sorted(set(cfg.save_weights) - set(KINDS))
    if unknown:
        raise ValueError(f"save_weights: unknown kind(s) {unknown}; use weak, ceiling, w2s")
    if tr.vmap_seeds > 1 and t.split_seed is None:
        raise ValueError(
            "train.vmap_seeds > 1 trains seeds side by side on the same rows: set "
            "task.split_seed so that every seed shares its splits"
        )
    if cfg.loss.supervision == "live" and cfg.extra_weak:
        raise ValueError(
            "live supervision uses one weak model; extra_weak needs supervision=labels"
        )
    lora = tr.lora
    if lora.rank < 0 or lora.alpha <= 0:
        raise ValueError(f"train.lora needs rank >= 0 and alpha > 0 (got {lora.rank}, {lora.alpha})")
    if not 0 <= lora.dropout < 1:
        raise ValueError(
            f"train.lora.dropout={lora.dropout}: the rate of dropout on the adapters' input "
            f"must be in [0, 1)"
        )
    unknown = sorted(set(lora.models) - {"weak", "strong"})
    if unknown:
        raise ValueError(f"train.lora.models: unknown role(s) {unknown}; use weak, strong")
    unknown = sorted(set(lora.targets) - set(LORA_GROUPS))
    if unknown:
        raise ValueError(
            f"train.lora.targets: unknown group(s) {unknown}; use {', '.join(LORA_GROUPS)}"
        )
    if is_preference(t):
        check_pref_config(cfg)
    elif is_generative(t):
        check_lm_config(cfg)
    else:
        step_loss(cfg.loss)  # unknown names fail here, before any training
    tracking.check(cfg.log)  # an enabled backend's package is missing


LM_LOSSES = ("dsft", "token_kd")
LM_AUX = ("none", "self")


PREF_STAGES = ("rm", "dpo")


def check_pref_config(cfg: Config) -> None:
    """Preference tasks (``w2s.pref.experiment``): the stage, its losses and judge, and the
    settings their runs do not implement, refused rather than ignored."""
    from w2s.pref.judge import JUDGES
    from w2s.pref.losses import check_dpo
    from w2s.pref.rm_train import RM_LOSSES

    p = cfg.pref
    if p.stage not in PREF_STAGES:
        raise ValueError(f"pref.stage={p.stage!r} unknown; use {', '.join(PREF_STAGES)}")
    if p.judge not in JUDGES:
        raise ValueError(f"pref.judge={p.judge!r} unknown; use {', '.join(JUDGES)}")
    check_dpo(p.loss, p.beta, p.label_smoothing)
    if p.epochs < 1 or p.samples < 0 or (p.samples > 0 and p.sample_temperature <= 0):
        raise ValueError(f"pref.epochs={p.epochs}, pref.samples={p.samples}, "
                         f"pref.sample_temperature={p.sample_temperature}: need epochs >= 1, "
                         "samples >= 0, and a temperature > 0 to sample")
    if p.stage == "dpo":
        if cfg.loss.name != "dsft":
            raise ValueError(f"pref.stage=dpo chains dSFT into dDPO: use loss=dsft, not "
                             f"{cfg.loss.name!r}")
        if sorted(cfg.kinds) != sorted(KINDS):
            raise ValueError(f"kinds={list(cfg.kinds)}: pref.stage=dpo runs the whole chain "
                             "(weak, ceiling and w2s, each SFT then DPO); drop kinds=")
        check_lm_config(cfg)
        return
    if cfg.loss.name not in RM_LOSSES or cfg.loss.supervision != "labels":
        raise ValueError(f"loss={cfg.loss.name} (supervision={cfg.loss.supervision}): reward "
                         f"models train with {' or '.join(RM_LOSSES)} on the weak RM's "
                         "preference probabilities (supervision=labels)")
    _refuse_unsupported(cfg, f"reward-model runs (preference task {cfg.task.name!r})")


def _refuse_unsupported(cfg: Config, what: str) -> None:
    tr = cfg.train
    unsupported = {
        "train.early_stop.runs": (list(tr.early_stop.runs), []),
        "train.vmap_seeds": (tr.vmap_seeds, 1),
        "train.lora.rank": (tr.lora.rank, 0),
        "train.grad_accum": (tr.grad_accum, 1),
        "train.select": (tr.select, "last"),
        "dry_run": (cfg.dry_run, False),
        "extra_weak": (list(cfg.extra_weak), []),
        "s2s_rounds": (cfg.s2s_rounds, 0),
        "loss.hard_labels": (cfg.loss.hard_labels, False),
        "log.tensorboard": (cfg.log.tensorboard, False),
        "log.wandb": (cfg.log.wandb, False),
        "log.mlflow": (cfg.log.mlflow, False),
    }
    for key, (got, plain) in unsupported.items():
        if got != plain:
            raise ValueError(f"{key}={got}: not implemented for {what}; set {key}={plain}")


def check_lm_config(cfg: Config) -> None:
    """Generative tasks (``w2s.lm.experiment``): the LM losses, and the classifier's settings
    that LM runs do not implement yet, refused rather than silently ignored (mid-run
    checkpoints, which never change a number, are skipped with a warning instead)."""
    loss = cfg.loss
    if loss.name not in LM_LOSSES:
        raise ValueError(
            f"loss {loss.name!r} is a classification loss; a generative task "
            f"({cfg.task.kind}) trains with loss=dsft or loss=token_kd"
        )
    if loss.name == "token_kd":
        check_token_divergence(loss.divergence, loss.temperature, loss.js_beta, loss.skew)
    if not 0 <= loss.on_policy <= 1 or (loss.on_policy > 0 and loss.name != "token_kd"):
        raise ValueError(f"loss.on_policy={loss.on_policy}: a share in [0, 1], and only for "
                         "token_kd (the teacher scores the student's samples)")
    if loss.aux not in LM_AUX:
        raise ValueError(f"loss.aux={loss.aux!r}: LM runs offer {', '.join(LM_AUX)} "
                         "(self: self-training on the student's own greedy answers)")
    if loss.samples < 1 or (loss.samples > 1 and loss.sample_temperature <= 0):
        raise ValueError(f"loss.samples={loss.samples} at loss.sample_temperature="
                         f"{loss.sample_temperature}: several answers per prompt need a "
                         "temperature > 0 (greedy answers repeat)")
    _refuse_unsupported(cfg, f"language-model runs (generative task {cfg.task.name!r})")
