"""Every rule of a recipe, checked before any work starts: the shared stages' rules here, each
paper's own in its profile module (seva.py, mia_dpo.py, mpo.py, ipa.py)."""

from __future__ import annotations

from visalign.recipes import ipa, mia_dpo, mpo, seva
from visalign.recipes.params import ConfigError, Recipe, RolloutParams
from visalign.recipes.registry import LOSS_TYPES, PROMPT_TEMPLATES

# Recipe name -> its profile module. A paper's rules hold for every recipe: any recipe may use a
# paper's parameters (e.g. ask for bco_pair with MPO's delta), so every recipe is checked by all.
PAPERS = {"seva": seva, "mia-dpo": mia_dpo, "mpo": mpo, "ipa": ipa}


def validate(recipe: Recipe) -> None:
    """Check every rule before any work starts; report all problems at once."""
    p: list[str] = []
    s, r, f, t, e, g = (recipe.sample, recipe.rollout, recipe.filter, recipe.train,
                        recipe.evaluate, recipe.register)
    if s.num_prompts < 1:
        p.append(f"sample.num_prompts={s.num_prompts}: must be >= 1")
    if s.max_questions_per_image < 1:
        p.append(f"sample.max_questions_per_image={s.max_questions_per_image}: must be >= 1")
    if r.engine not in ("hf",):
        p.append(f"rollout.engine={r.engine!r}: unknown engine; available: hf")
    for where, v in (("rollout.batch_size", r.batch_size), ("rollout.max_new_tokens", r.max_new_tokens),
                     ("evaluate.batch_size", e.batch_size), ("train.per_device_batch_size", t.per_device_batch_size),
                     ("train.gradient_accumulation_steps", t.gradient_accumulation_steps),
                     ("train.data_repeats", t.data_repeats),
                     ("train.reference_batch_size", t.reference_batch_size), ("rollout.checkpoint_every", r.checkpoint_every)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    if e.judge not in ("none", "endpoint"):
        p.append(f"evaluate.judge={e.judge!r}: choose none or endpoint (VISALIGN_JUDGE_URL/_MODEL/_API_KEY)")
    if e.judge_extraction and e.judge == "none":
        p.append("evaluate.judge_extraction=True needs a judge: set evaluate.judge=endpoint")
    if e.significance_samples < 0:
        p.append(f"evaluate.significance_samples={e.significance_samples}: must be >= 0 (0 = off)")
    if not 0.5 <= e.confidence < 1:
        p.append(f"evaluate.confidence={e.confidence}: must be in [0.5, 1), e.g. 0.95")
    if g.require_significance and e.significance_samples == 0:
        p.append("register.require_significance=True needs evaluate's paired comparison: set "
                 "evaluate.significance_samples > 0 (default 1000) or register.require_significance=false")
    if e.circular not in ("auto", "on", "off"):
        p.append(f"evaluate.circular={e.circular!r}: choose auto, on or off")
    for where, v in (("evaluate.open_max_new_tokens", e.open_max_new_tokens),
                     ("evaluate.judge_max_tokens", e.judge_max_tokens),
                     ("evaluate.judge_concurrency", e.judge_concurrency)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    if e.judge_retries < 0 or e.judge_timeout_s <= 0:
        p.append(f"evaluate.judge_retries={e.judge_retries} / judge_timeout_s={e.judge_timeout_s}: need retries >= 0 "
                 "and timeout > 0")
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
    if t.precompute_reference not in ("auto", "on", "off"):
        p.append(f"train.precompute_reference={t.precompute_reference!r}: choose auto, on or off")
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
    p += _sampling_problems(r)
    for paper in PAPERS.values():  # every paper's rules, whatever the recipe
        p += paper.problems(recipe)
    if p:
        raise ConfigError(p)


def _sampling_problems(r: RolloutParams) -> list[str]:
    """The rollout sampling-mode rules; a list of problems, empty when fine."""
    p = []
    if r.num_samples < 1:
        p.append(f"rollout.num_samples={r.num_samples}: must be >= 1")
    if r.num_samples > 1 and not r.do_sample:
        p.append(f"rollout.num_samples={r.num_samples}: greedy decoding gives {r.num_samples} identical answers; "
                 "set rollout.do_sample=true or num_samples=1")
    if r.samples_without_reference < 1:
        p.append(f"rollout.samples_without_reference={r.samples_without_reference}: must be >= 1")
    if r.samples_without_reference > 1 and not r.do_sample:
        p.append(f"rollout.samples_without_reference={r.samples_without_reference}: greedy decoding gives identical "
                 "answers; set rollout.do_sample=true or samples_without_reference=1")
    if r.temperature <= 0:
        p.append(f"rollout.temperature={r.temperature}: must be > 0 (MPO: 0.7); for greedy set do_sample=false")
    if r.top_k < 0:
        p.append(f"rollout.top_k={r.top_k}: must be >= 0 (0 = no limit; MPO: 50)")
    if not 0 < r.top_p <= 1:
        p.append(f"rollout.top_p={r.top_p}: must be in (0, 1] (1 = off)")
    if r.prompt_template not in PROMPT_TEMPLATES:
        p.append(f"rollout.prompt_template={r.prompt_template!r}: unknown; choose one of {sorted(PROMPT_TEMPLATES)}")
    return p
