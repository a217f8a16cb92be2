"""IPA's profile (METHODS.md section 4; no public code, so every value is unverified): its paper and
toy values, the toy model's prompt templates and its ipa/verify rules.

The stages it adds live in visalign/ipa/ (collect, verify, pairs, summary); their parameters are
IpaParams and VerifyParams in recipes/params.py, whose defaults are the paper-style templates.
"""

from __future__ import annotations

from typing import Any

from visalign.recipes.params import IPA_MAX_ROUNDS, TOY_TRAIN, Recipe

# The toy model's byte-level BPE knows only the toy world's words, so its templates are short; the
# toy verify template is also the one toyworld's verification SFT examples use (toyworld/ipa_sft.py).
IPA_TOY_FEEDBACK_PROMPT = "{question}\nAnswer: {response}\nFeedback:"
IPA_TOY_REFERENCE_FEEDBACK_PROMPT = "{question}\nAnswer: {response}\nReference: {reference}\nFeedback:"
IPA_TOY_REFINE_PROMPT = "{question}\nAnswer: {response}\nFeedback: {feedback}"
IPA_TOY_VERIFY_PROMPT = "Verify: {question}\nReference: {reference}\nResponse: {response}"
IPA_TOY_VERIFY_RETRY_SUFFIX = "\nVerdict:"

# IPA (unverified, no public code): instructions matter ("follows"), so LLaVA's short-answer suffix
# stays in the question; "normal sampling" samples (rollout's temperature/top_k); DPO + LoRA for
# 1 epoch (no repeats).
PAPER: dict[str, Any] = {"sample.strip_suffixes": (), "rollout.do_sample": True, "train.data_repeats": 1,
                         "register.model_name": "visalign-ipa"}

TOY: dict[str, Any] = {
    "sample.num_prompts": 128,
    "sample.strip_suffixes": (),
    "rollout.batch_size": 32,
    "rollout.max_new_tokens": 8,
    # two samples per view at temperature 1: greedy answers of the tiny model rarely differ between
    # views, so few seeds got both a verified and a rejected answer (measured: 37 vs 150 pairs in round 1)
    "rollout.do_sample": True,
    "rollout.num_samples": 2,
    "rollout.temperature": 1.0,
    "ipa.feedback_max_new_tokens": 8,
    "ipa.scale_factor": 0.5,
    "ipa.feedback_prompt": IPA_TOY_FEEDBACK_PROMPT,
    "ipa.reference_feedback_prompt": IPA_TOY_REFERENCE_FEEDBACK_PROMPT,
    "ipa.refine_prompt": IPA_TOY_REFINE_PROMPT,
    "verify.prompt": IPA_TOY_VERIFY_PROMPT,
    "verify.retry_suffix": IPA_TOY_VERIFY_RETRY_SUFFIX,
    "verify.max_new_tokens": 8,
    "verify.batch_size": 32,
    "train.data_repeats": 1,
    "train.num_epochs": 2.0,
    **TOY_TRAIN,
    "train.max_length": 160,
    "evaluate.batch_size": 64,
    "evaluate.max_new_tokens": 8,
    "register.model_name": "visalign-ipa-toy",
    "register.target_metric": "toy_pope/f1",
    "register.guard_metrics": ("toy_mc/accuracy",),
}


def problems(recipe: Recipe) -> list[str]:
    """The ipa and verify rules (METHODS.md section 4); a list of problems, empty when fine."""
    i, v = recipe.ipa, recipe.verify
    p = []
    if not 1 <= i.rounds <= IPA_MAX_ROUNDS:
        p.append(f"ipa.rounds={i.rounds}: must be in [1, {IPA_MAX_ROUNDS}] (the pipeline unrolls {IPA_MAX_ROUNDS} "
                 "rounds; IPA uses 3)")
    known = ("noise", "blur", "scale")
    p += [f"ipa.perturbations: {x!r}: unknown; choose from {known}" for x in i.perturbations if x not in known]
    if not 0 <= i.noise_step < 1000:
        p.append(f"ipa.noise_step={i.noise_step}: must be in [0, 1000) (augment's diffusion schedule)")
    if i.blur_sigma <= 0:
        p.append(f"ipa.blur_sigma={i.blur_sigma}: must be > 0")
    if not 0 < i.scale_factor < 1:
        p.append(f"ipa.scale_factor={i.scale_factor}: must be in (0, 1), e.g. 0.25")
    for where, v_ in (("ipa.feedback_max_new_tokens", i.feedback_max_new_tokens),
                      ("ipa.max_pairs_per_prompt", i.max_pairs_per_prompt), ("verify.max_new_tokens", v.max_new_tokens),
                      ("verify.batch_size", v.batch_size)):
        if v_ < 1:
            p.append(f"{where}={v_}: must be >= 1")
    for where, template, keys in (("ipa.feedback_prompt", i.feedback_prompt, ("question", "response")),
                                  ("ipa.reference_feedback_prompt", i.reference_feedback_prompt,
                                   ("question", "response", "reference")),
                                  ("ipa.refine_prompt", i.refine_prompt, ("question", "response", "feedback")),
                                  ("verify.prompt", v.prompt, ("question", "reference", "response"))):
        missing = [k for k in keys if "{" + k + "}" not in template]
        if missing:
            p.append(f"{where}: the template lacks {['{' + k + '}' for k in missing]}; it must contain {keys}")
    if v.backend not in ("local", "endpoint"):
        p.append(f"verify.backend={v.backend!r}: choose local or endpoint")
    criteria = ("entails", "complete", "consistent", "follows")
    p += [f"verify.require: {c!r}: unknown criterion; choose from {criteria}" for c in v.require if c not in criteria]
    if not v.require:
        p.append("verify.require=(): name at least one criterion (IPA: all four)")
    if v.endpoint_retries < 0 or v.endpoint_timeout_s <= 0 or v.endpoint_backoff_s < 0 or v.endpoint_backoff_factor < 1:
        p.append(f"verify.endpoint_*: need retries >= 0 (got {v.endpoint_retries}), timeout_s > 0 (got "
                 f"{v.endpoint_timeout_s}), backoff_s >= 0 (got {v.endpoint_backoff_s}), backoff_factor >= 1 "
                 f"(got {v.endpoint_backoff_factor})")
    if v.endpoint_concurrency < 1:
        p.append(f"verify.endpoint_concurrency={v.endpoint_concurrency}: must be >= 1 (requests in flight)")
    if v.max_consecutive_errors is not None and v.max_consecutive_errors < 1:
        p.append(f"verify.max_consecutive_errors={v.max_consecutive_errors}: must be >= 1, or None to never stop "
                 "calling a failing endpoint (e.g. 20)")
    if not 0 <= v.max_error_share <= 1:
        p.append(f"verify.max_error_share={v.max_error_share}: must be in [0, 1] (e.g. 0.5; 1 = never fail)")
    return p
