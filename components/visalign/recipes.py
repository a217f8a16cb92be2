"""The recipes' parameters, with the papers' defaults: the one home of every parameter.

A recipe is a frozen dataclass of per-stage parameter dataclasses. CLI flags and pipeline
parameters are derived from these fields (`add_arguments`, `apply_overrides`); the help text is
written once, in each field's metadata. `profile="toy"` scales a recipe down for the tiny model
the demo and tests build (toyworld); the paper values stay the defaults.

    recipe = load("seva", profile="toy", overrides={"train.beta": 0.2})
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any

SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."


class ConfigError(ValueError):
    """Every problem of a configuration at once, each naming the field, value, rule and fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


def _p(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class SampleParams:
    num_prompts: int = _p(8000, "Prompts to pick (SeVa: 8k per source). Seeded; all when the input has fewer.")
    max_questions_per_image: int = _p(2, "At most this many questions per image (SeVa: 2).")
    strip_suffixes: tuple[str, ...] = _p(
        (SHORT_ANSWER_SUFFIX,), "Suffixes removed from questions (SeVa strips LLaVA's short-answer suffix)."
    )
    seed: int = _p(0, "Random seed for picking.")


@dataclass(frozen=True)
class AugmentParams:
    name: str = _p("diffusion", "Augmentation: diffusion (SeVa), flip, random_resized_crop, autoaugment, "
                   "mocov2, simclr, byol. See visalign.augment.AUGMENTATIONS.")
    diffusion_step: int = _p(800, "Diffusion noise step t in [0, T): 500 is SeVa's 'weak', 800 its 'strong'.")
    diffusion_timesteps: int = _p(1000, "T of the sigmoid beta schedule (SeVa: 1000).")
    beta_start: float = _p(1e-5, "First beta of the sigmoid schedule (SeVa: 1e-5).")
    beta_end: float = _p(5e-3, "Last beta of the sigmoid schedule (SeVa: 5e-3).")
    seed: int = _p(0, "Base seed; each prompt's view gets a seed derived from it and the prompt id.")


@dataclass(frozen=True)
class RolloutParams:
    engine: str = _p("hf", "Generation engine: hf (transformers generate, batched, left padding).")
    batch_size: int = _p(8, "Prompts per generate() call. Larger is faster until memory runs out.")
    max_new_tokens: int = _p(512, "Longest answer in tokens (SeVa and MIA-DPO: 512).")
    dtype: str = _p("auto", "Model dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16, float16, float32.")
    checkpoint_every: int = _p(64, "Append finished responses to disk every this many prompts (resumable).")


@dataclass(frozen=True)
class FilterParams:
    end_markers: tuple[str, ...] = _p(
        ("</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<end_of_utterance>"),
        "End-of-sequence markers stripped from answers after the equality check (SeVa).",
    )
    target_count: int | None = _p(None, "Down-sample the pairs to this many (seeded); None keeps all.")
    seed: int = _p(0, "Random seed for down-sampling.")


@dataclass(frozen=True)
class TrainParams:
    loss_type: tuple[str, ...] = _p(("sigmoid",), "TRL DPO loss type(s) (SeVa: sigmoid); several are summed with loss_weights.")
    loss_weights: tuple[float, ...] | None = _p(None, "Weights of the loss types (MPO: 0.8,0.2,1.0); None = all 1.")
    beta: float = _p(0.1, "DPO beta (SeVa: 0.1).")
    lora_r: int = _p(1024, "LoRA rank (SeVa: 1024). 0 trains all parameters.")
    lora_alpha: int = _p(2048, "LoRA alpha (SeVa: 2048).")
    lora_dropout: float = _p(0.05, "LoRA dropout (SeVa: 0.05).")
    learning_rate: float = _p(2e-6, "Peak learning rate (SeVa: 2e-6).")
    lr_scheduler: str = _p("cosine", "Learning-rate schedule (SeVa: cosine).")
    warmup_ratio: float = _p(0.03, "Warm-up fraction of the steps (SeVa: 0.03).")
    num_epochs: float = _p(1.0, "Epochs over the (repeated) pairs.")
    data_repeats: int = _p(2, "Times the pairs are repeated per epoch (SeVa's reference code feeds them twice).")
    per_device_batch_size: int = _p(1, "Pairs per device per step.")
    gradient_accumulation_steps: int = _p(8, "Steps accumulated before an optimiser update.")
    max_length: int = _p(2048, "Longest prompt+answer in tokens; must cover the image tokens.")
    deepspeed: str | None = _p("zero3", "DeepSpeed config shipped in the package: zero2, zero3, or None for plain DDP/CPU.")
    precision: str = _p("auto", "auto (bf16 on GPU, fp32 on CPU), bf16, fp32.")
    gradient_checkpointing: bool = _p(True, "Recompute activations to save memory (TRL's default on).")
    merge: bool = _p(False, "Also save the adapter merged into the base model.")
    logging_steps: int = _p(1, "Log the loss every this many steps.")
    save_steps: int = _p(200, "Save a resumable checkpoint every this many optimiser steps.")
    checkpoint_dir: str | None = _p(None, "Checkpoint directory (a workspace volume on a cluster); a re-run with the "
                                    "same one resumes from its last checkpoint. None: inside the output, removed after.")
    seed: int = _p(0, "Training seed.")
    num_nodes: int = _p(1, "Nodes to train on. 1: every GPU of the train step's pod. >1: the step submits a Kubeflow "
                        "Trainer TrainJob (torch-distributed runtime, DeepSpeed) of this many nodes, each with the GPU "
                        "pool's GPUs, sharded by train.deepspeed (plain DDP when None); needs Kubeflow Trainer and an "
                        "s3:// pipeline root.")


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = _p(16, "Questions per generate() call.")
    max_new_tokens: int = _p(16, "Answer length for benchmark questions (short answers).")
    limit: int | None = _p(None, "Evaluate only the first N rows of each benchmark (for smoke runs).")


@dataclass(frozen=True)
class RegisterParams:
    model_name: str = _p("visalign-seva", "Registered model name in MLflow.")
    target_metric: str = _p("pope/f1", "Metric that must improve for promotion: '<benchmark>/<metric>'.")
    guard_metrics: tuple[str, ...] = _p((), "Metrics that must not drop by more than max_guard_drop.")
    max_guard_drop: float = _p(0.01, "Largest allowed drop (absolute) of a guard metric.")
    min_improvement: float = _p(0.0, "Target metric must beat the champion by more than this.")


@dataclass(frozen=True)
class Recipe:
    name: str
    sample: SampleParams = field(default_factory=SampleParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    rollout: RolloutParams = field(default_factory=RolloutParams)
    filter: FilterParams = field(default_factory=FilterParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


STAGES = ("sample", "augment", "rollout", "filter", "train", "evaluate", "register")

# The papers' settings (METHODS.md). Only what differs from the dataclass defaults is listed.
PAPER: dict[str, dict[str, Any]] = {
    "seva": {},
}

# Scaled down for toyworld's tiny model on two CPU cores: a few hundred prompts, one-token
# answers, a small LoRA and a learning rate that moves a 150k-parameter model in minutes.
TOY: dict[str, dict[str, Any]] = {
    "seva": {
        "sample.num_prompts": 240,
        "rollout.batch_size": 32,
        "rollout.max_new_tokens": 8,
        "train.lora_r": 16,
        "train.lora_alpha": 32,
        "train.learning_rate": 5e-4,
        "train.warmup_ratio": 0.1,
        "train.per_device_batch_size": 8,
        "train.gradient_accumulation_steps": 1,
        "train.max_length": 128,
        "train.deepspeed": None,
        "train.gradient_checkpointing": False,
        "evaluate.batch_size": 64,
        "evaluate.max_new_tokens": 8,
        "register.model_name": "visalign-seva-toy",
        "register.target_metric": "toy_pope/f1",
        "register.guard_metrics": ("toy_mc/accuracy",),
    },
}

PROFILES = {"paper": PAPER, "toy": TOY}


def names() -> list[str]:
    return sorted(PAPER)


def load(name: str, profile: str = "paper", overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe `name` under `profile`, with `overrides` ('stage.field': value) applied."""
    problems = []
    if name not in PAPER:
        problems.append(f"recipe={name!r}: unknown recipe; choose one of {names()}")
    if profile not in PROFILES:
        problems.append(f"profile={profile!r}: unknown profile; choose one of {sorted(PROFILES)}")
    if problems:
        raise ConfigError(problems)
    merged = {**PAPER[name], **PROFILES[profile].get(name, {}), **(overrides or {})}
    recipe = apply_overrides(Recipe(name=name), merged)
    validate(recipe)
    return recipe


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Parse CLI/pipeline strings into the field's type; raise ValueError naming the rule."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if isinstance(value, (int, float)):
            value = [value]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v] if not value.startswith("[") else json.loads(value)
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        if isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(f"{where}={value!r}: expected true or false")
        return bool(value)
    if annotation in (int, float, str):
        try:
            out = annotation(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}={value!r}: expected {annotation.__name__}") from None
        if annotation is int and isinstance(value, float) and value != out:
            raise ValueError(f"{where}={value!r}: expected an integer")
        return out
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(recipe: Recipe, overrides: dict[str, Any]) -> Recipe:
    """Apply {'stage.field': value}; every unknown key or bad value is reported at once."""
    problems: list[str] = []
    per_stage: dict[str, dict[str, Any]] = {}
    stage_types = _field_types(Recipe)
    for key, value in overrides.items():
        stage, _, name = key.partition(".")
        if stage not in STAGES or not name:
            problems.append(f"{key}: unknown parameter; keys look like 'stage.field' with stage in {list(STAGES)}")
            continue
        hints = _field_types(stage_types[stage])
        if name not in hints:
            problems.append(f"{key}: unknown field of {stage}; known: {sorted(hints)}")
            continue
        try:
            per_stage.setdefault(stage, {})[name] = _coerce(value, hints[name], key)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError(problems)
    return replace(recipe, **{s: replace(getattr(recipe, s), **kv) for s, kv in per_stage.items()})


def validate(recipe: Recipe) -> None:
    """Check every rule before any work starts; report all problems at once."""
    p: list[str] = []
    s, a, r, f, t, e, g = (recipe.sample, recipe.augment, recipe.rollout, recipe.filter, recipe.train,
                           recipe.evaluate, recipe.register)
    if s.num_prompts < 1:
        p.append(f"sample.num_prompts={s.num_prompts}: must be >= 1")
    if s.max_questions_per_image < 1:
        p.append(f"sample.max_questions_per_image={s.max_questions_per_image}: must be >= 1")
    if not 0 <= a.diffusion_step < a.diffusion_timesteps:
        p.append(f"augment.diffusion_step={a.diffusion_step}: must be in [0, diffusion_timesteps="
                 f"{a.diffusion_timesteps}); SeVa uses 500 (weak) or 800 (strong)")
    if not 0 < a.beta_start < a.beta_end < 1:
        p.append(f"augment.beta_start={a.beta_start}, beta_end={a.beta_end}: need 0 < beta_start < beta_end < 1")
    from visalign.augment import AUGMENTATIONS  # late: augment imports numpy/PIL

    if a.name not in AUGMENTATIONS:
        p.append(f"augment.name={a.name!r}: unknown augmentation; choose one of {sorted(AUGMENTATIONS)}")
    if r.engine not in ("hf",):
        p.append(f"rollout.engine={r.engine!r}: unknown engine; available: hf")
    for where, v in (("rollout.batch_size", r.batch_size), ("rollout.max_new_tokens", r.max_new_tokens),
                     ("evaluate.batch_size", e.batch_size), ("train.per_device_batch_size", t.per_device_batch_size),
                     ("train.gradient_accumulation_steps", t.gradient_accumulation_steps),
                     ("train.data_repeats", t.data_repeats), ("rollout.checkpoint_every", r.checkpoint_every)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    for where, v in (("rollout.dtype", r.dtype),):
        if v not in ("auto", "bfloat16", "float16", "float32"):
            p.append(f"{where}={v!r}: choose auto, bfloat16, float16 or float32")
    if f.target_count is not None and f.target_count < 1:
        p.append(f"filter.target_count={f.target_count}: must be >= 1 or None (keep all)")
    if t.beta <= 0:
        p.append(f"train.beta={t.beta}: must be > 0 (SeVa: 0.1)")
    if t.learning_rate <= 0:
        p.append(f"train.learning_rate={t.learning_rate}: must be > 0")
    if t.lora_r < 0:
        p.append(f"train.lora_r={t.lora_r}: must be >= 0 (0 = full fine-tuning)")
    if not 0 <= t.lora_dropout < 1:
        p.append(f"train.lora_dropout={t.lora_dropout}: must be in [0, 1)")
    if not 0 <= t.warmup_ratio < 1:
        p.append(f"train.warmup_ratio={t.warmup_ratio}: must be in [0, 1)")
    if t.deepspeed not in (None, "zero2", "zero3"):
        p.append(f"train.deepspeed={t.deepspeed!r}: choose zero2, zero3 or None")
    if t.num_nodes < 1:
        p.append(f"train.num_nodes={t.num_nodes}: must be >= 1 (1 = train in the step's own pod)")
    if t.precision not in ("auto", "bf16", "fp32"):
        p.append(f"train.precision={t.precision!r}: choose auto, bf16 or fp32 (fp16 is not supported; use bf16)")
    from visalign.train import LOSS_TYPES  # late: train imports torch lazily

    for lt in t.loss_type:
        if lt not in LOSS_TYPES:
            p.append(f"train.loss_type: {lt!r}: unknown; choose from {sorted(LOSS_TYPES)}")
    if t.loss_weights is not None and len(t.loss_weights) != len(t.loss_type):
        p.append(f"train.loss_weights={t.loss_weights}: needs one weight per loss type {t.loss_type}")
    if "/" not in g.target_metric:
        p.append(f"register.target_metric={g.target_metric!r}: write it as '<benchmark>/<metric>', e.g. pope/f1")
    for m in g.guard_metrics:
        if "/" not in m:
            p.append(f"register.guard_metrics: {m!r}: write it as '<benchmark>/<metric>'")
    if g.max_guard_drop < 0:
        p.append(f"register.max_guard_drop={g.max_guard_drop}: must be >= 0")
    if p:
        raise ConfigError(p)


# ---- deriving CLI flags from the dataclasses -------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser, stage: str) -> None:
    """Add --recipe/--profile and one --<field> flag per field of the stage's parameters."""
    parser.add_argument("--recipe", default="seva", help=f"Recipe whose defaults apply: {names()}.")
    parser.add_argument("--profile", default="paper", choices=sorted(PROFILES),
                        help="paper: the papers' values; toy: scaled down for the toyworld model.")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="Override any recipe parameter (repeatable).")
    cls = _field_types(Recipe)[stage]
    group = parser.add_argument_group(f"{stage} parameters (default: the recipe's)")
    for f in fields(cls):
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=None,
                           help=f.metadata.get("help", ""))


def recipe_from_args(args: argparse.Namespace, stage: str) -> Recipe:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError([f"--set {item!r}: write it as STAGE.FIELD=VALUE"])
        overrides[key] = value
    for k, v in vars(args).items():
        if k.startswith("param_") and v is not None:
            overrides[f"{stage}.{k[len('param_'):]}"] = v
    return load(args.recipe, args.profile, overrides)
