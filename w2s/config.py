"""Structured-config schemas: every key a run reads, with its type and default.

Registered in Hydra's ConfigStore so that a wrong type or an unknown key fails with
Hydra's own message before anything trains. The YAML files in ``conf/`` pick values;
these dataclasses say what may be picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    """A pretrained checkpoint used as weak or strong model."""

    name: str = MISSING  # short name used in run ids and tables, e.g. "gpt2-medium"
    path: str = MISSING  # local directory or Hugging Face hub id
    pooling: str | None = None  # last | cls | mean; None picks the family default
    param_dtype: str = "float32"  # master weights
    compute_dtype: str = "float32"  # activations (bfloat16 on accelerators)
    lr: float | None = None  # per-model learning rate; None uses train.lr
    overrides: dict[str, Any] = field(
        default_factory=dict
    )  # HF config keys, e.g. num_hidden_layers


@dataclass
class TaskConfig:
    """Where a task's examples come from and how they are split into A, B, val and test."""

    name: str = MISSING  # short name used in run ids and tables
    kind: str = MISSING  # classification: sciq | boolq | cosmos_qa | amazon_polarity |
    # anthropic_hh | bigbench | local; generative (LM runs, w2s.lm): bigbench_gen | local_gen |
    # arithmetic; preference pairs (w2s.pref.pairs): local_pairs | hh_pairs | bigbench_pairs |
    # arithmetic_pairs
    source: str | None = None  # HF dataset id, BIG-bench task path, or local data file
    path: str | None = None  # local file in the source's schema, used instead of downloading
    hf_split: str = "train"  # split of the HF dataset the examples are drawn from
    classes: list[str] | None = None  # BIG-bench: keep only these choices, as class labels
    num_labels: int | None = None  # local files: declared label count (labels must lie in 0..n-1)
    n_a: int = 1000  # weak model's ground-truth training split
    n_b: int = 1000  # strong model's training split (weak labels or ground truth)
    n_val: int = 200  # held-out split for thresholds (cascade budgets)
    n_test: int = 1000
    balance: bool = False  # class-balance every split
    max_length: int = 128  # tokens
    overlong: str = "truncate"  # truncate | drop (generative: of references; prompts that
    # leave no room for a response token are always dropped, and counted)
    split_seed: int | None = None  # None: the run's seed also draws the splits
    dedup: bool = True  # keep one copy of identical texts; counted in the task's dropped
    # generative tasks: the longest answer generated, and chat formatting of prompts (None: when
    # the tokenizer has a chat template)
    max_new_tokens: int = 32
    chat: bool | None = None


@dataclass
class LossConfig:
    """How the strong model is supervised in a w2s run (weak and ceiling runs use ground truth)."""

    name: str = "xent"  # xent | logconf | product | kd
    supervision: str = "labels"  # labels (cached weak soft labels) | live (weak model in the step)
    hard_labels: bool = (
        False  # offline: train on the weak model's argmax instead of its probabilities
    )
    # logconf (Burns et al. 2023 auxiliary confidence loss)
    aux_coef: float = 0.5
    warmup_frac: float = 0.2
    warmup: str = "step"  # step (the reference code's jump) | linear
    # product: target proportional to p_strong^beta * y_weak^alpha
    alpha: float = 1.0
    beta: float = 1.0
    # live KD and the combined objective L = (1 - a(t)) D(weak || strong) + a(t) L_aux
    divergence: str = "fkl"  # fkl | rkl | js | tv
    temperature: float = 1.0
    aux: str = "none"  # none | confidence | gt
    alpha_max: float = 0.0
    alpha_schedule: str = "constant"  # constant | linear | step | cosine
    gt_fraction: float = 0.0  # aux=gt: share of B whose ground truth is used (not pure W2S)
    # language-model w2s (generative tasks; names dsft | token_kd): divergence above, plus
    # fkl | rkl | js | tv | skew_fkl | skew_rkl; aux=self is self-training on the student's
    # own greedy answers under the alpha schedule above
    js_beta: float = 0.5  # js: the teacher's weight in the mixture m = b q + (1 - b) p
    skew: float = 0.1  # skew_fkl / skew_rkl: lambda
    on_policy: float = 0.0  # token_kd: share of batches on the student's own samples (GKD)
    samples: int = 1  # weak answers per B prompt that the student learns from
    sample_temperature: float = 0.0  # of those answers; 0: greedy


@dataclass
class PrefConfig:
    """Preference runs (pairwise tasks, ``w2s.pref``): which stage, and DPO's settings."""

    stage: str = "rm"  # rm: reward models (weak / ceiling / w2s on pairs); dpo: the SFT -> DPO chain
    judge: str = "lm"  # dDPO's weak judge: lm (the weak LM's mean token log-likelihood of each
    # response) | rm (a weak reward model trained on A's ground-truth pairs)
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO's epsilon
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    lr: float | None = None  # DPO's learning rate; None: the strong model's SFT rate
    epochs: int = 1
    samples: int = 0  # AI feedback: policy samples per B prompt ranked by the judge (0: the
    # task's own response pairs)
    sample_temperature: float = 1.0
    min_margin: float = 0.0  # keep judged pairs whose judge margin is at least this


@dataclass
class LoRAConfig:
    """LoRA adapters (rank > 0) on the attention and/or MLP projections of the listed models'
    backbones; the head always trains. Adapters are merged into the weights after training."""

    rank: int = 0  # 0: full fine-tuning
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    dropout: float = 0.0  # on the adapter's input, in train steps only; in [0, 1)
    targets: list[str] = field(default_factory=lambda: ["attention", "mlp"])
    models: list[str] = field(default_factory=lambda: ["strong"])  # weak and/or strong


@dataclass
class EarlyStopConfig:
    """Train the listed kinds of run until their val loss stops falling, under a budget.

    Weak and ceiling runs score val against ground truth (they may: it is their own labelled
    data); a w2s run listed here scores it against its supervisor's labels, never ground truth.
    A listed run trains up to ``max_epochs`` (its schedule spans them), evaluates every
    ``every`` steps (0: once an epoch), stops after ``patience`` evaluations in a row without
    a val loss lower than its best by more than ``min_delta``, and ends with its best
    parameters; ``train.epochs``, ``eval_every`` and ``select`` then apply only to the others.
    """

    runs: list[str] = field(default_factory=lambda: ["weak", "ceiling"])  # [] turns it off
    max_epochs: int = 10
    patience: int = 2
    min_delta: float = 0.0  # in nats of mean val cross-entropy
    every: int = 0


@dataclass
class TrainConfig:
    optimizer: str = "adamw"  # adam | adamw | adafactor
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_frac: float = 0.1
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    clip_norm: float = 1.0  # 0 disables clipping
    epochs: int = 2
    batch_size: int = 32
    grad_accum: int = 1
    eval_batch_size: int = 128
    eval_every: int = 0  # steps between val evaluations (0: none); w2s runs score val against
    # the supervisor's labels, weak and ceiling runs against ground truth
    select: str = "last"  # last | best: keep the final parameters or the best by that val score
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    checkpoint_every: int = 0  # steps; 0 disables checkpoints
    keep_checkpoints: bool = False  # keep a finished run's checkpoints (else removed when done)
    buckets: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    vmap_seeds: int = 1  # train this many seeds of one model in one compiled program
    remat: str = "none"  # none | full | dots: what each layer keeps for the backward pass
    scan_layers: bool = False  # stack the layers and lax.scan them: compile time flat in depth
    # how parameters stored in bf16/fp16 (param_dtype) get updates smaller than their rounding:
    # master (float32 copy in the optimizer) | kahan (compensation buffer) | stochastic (bf16)
    low_precision_update: str = "master"
    attention: str = "xla"  # xla | cudnn
    progress: bool = True


@dataclass
class MeshConfig:
    """Device mesh; -1 takes every device left over."""

    data: int = -1
    fsdp: int = 1
    tp: int = 1


@dataclass
class DistributedConfig:
    """Multi-process start (``jax.distributed.initialize``); nulls are detected from the
    cluster environment (SLURM, Open MPI, Cloud TPU)."""

    enabled: bool = False
    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None


@dataclass
class LogConfig:
    """Experiment tracking (``w2s.tracking``): per-step scalars and final metrics of every run
    trained. Cosmetic: never part of a run id. W&B runs offline and MLflow to a local file
    store unless ``WANDB_MODE`` / ``MLFLOW_TRACKING_URI`` are set."""

    tensorboard: bool = False  # event files under <dir>/tensorboard/<group>/<run>/
    wandb: bool = False  # needs the wandb package; runs under <dir>/wandb/
    mlflow: bool = False  # needs mlflow (or mlflow-skinny); file://<dir>/mlruns
    dir: str = "${results_dir}/tracking"
    group: str | None = None  # None: <task>_<weak>_to_<strong>_<loss>


@dataclass
class Config:
    weak: ModelConfig = MISSING
    strong: ModelConfig = MISSING
    task: TaskConfig = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    log: LogConfig = field(default_factory=LogConfig)
    pref: PrefConfig = field(default_factory=PrefConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    kinds: list[str] = field(default_factory=lambda: ["weak", "ceiling", "w2s"])
    extra_weak: list[ModelConfig] = field(default_factory=list)  # more weak supervisors
    weak_combine: str = "mean"  # mean | confidence: how several supervisors' labels are merged
    filter_q: float = 1.0  # train the strong model on the top-q share of B by weak confidence
    s2s_rounds: int = 0  # strong-to-strong rounds after w2s
    results_dir: str = "results"
    cache_dir: str = "${oc.env:W2S_CACHE,${oc.env:HOME}/.cache/w2s}"
    force: bool = False  # recompute runs even when a finished one exists
    dry_run: bool = False  # print the memory plan and exit
    # kinds whose trained weights are kept in their run dir (weak always: live KD reads them);
    # add ceiling (and w2s) to serve a cascade with w2s-cascade. Not part of any run id.
    save_weights: list[str] = field(default_factory=lambda: ["weak"])
    verbose: bool = False  # INFO logs (w2s, orbax/absl, JAX, transformers) on the console too;
    # cosmetic, so not part of any run id. The job's log file always has them.


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="w2s_schema", node=Config)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="task", name="task_schema", node=TaskConfig)
    cs.store(group="loss", name="loss_schema", node=LossConfig)
    cs.store(group="train", name="train_schema", node=TrainConfig)
    cs.store(group="pref", name="pref_schema", node=PrefConfig)
