"""MPO's profile (METHODS.md section 3): its paper and toy values and its pairs/loss rules.

The stage it adds lives in visalign/mpo/ (pairs); its loss is a train option every recipe may use
(visalign/stages/mpo_loss.py) and its answer checking is shared with evaluate
(visalign/stages/correctness.py). Parameters: MpoPairsParams and TrainParams in recipes/params.py.
"""

from __future__ import annotations

from typing import Any

from visalign.recipes.params import TOY_TRAIN, Recipe
from visalign.recipes.registry import MPO_LOSS_TYPES

# MPO (InternVL2-8B): 32 CoT samples per question at temperature 0.7 / top-k 50; loss 0.8 DPO + 0.2 BCO-pair
# (with delta) + 1.0 SFT, beta 0.1; full parameters, lr 5e-6 cosine, warmup 0.03, weight decay 0.05, 1 epoch;
# global batch 256 = 1 per device x 32 accumulated x 8 GPUs.
PAPER: dict[str, Any] = {
    "rollout.num_samples": 32, "rollout.do_sample": True, "rollout.temperature": 0.7, "rollout.top_k": 50,
    "rollout.prompt_template": "cot", "rollout.max_new_tokens": 1024,
    "train.loss_type": ("sigmoid", "bco_pair", "sft"), "train.loss_weights": (0.8, 0.2, 1.0),
    "train.beta": 0.1, "train.lora_r": 0, "train.learning_rate": 5e-6, "train.lr_scheduler": "cosine",
    "train.warmup_ratio": 0.03, "train.weight_decay": 0.05, "train.num_epochs": 1.0, "train.data_repeats": 1,
    "train.gradient_accumulation_steps": 32, "register.model_name": "visalign-mpo",
}
# Toy: short step-by-step answers (toyworld's counting/comparing/locating kinds), a few samples each.
TOY: dict[str, Any] = {
    "sample.num_prompts": 96,
    "rollout.num_samples": 6,
    "rollout.batch_size": 48,
    "rollout.max_new_tokens": 24,
    "rollout.temperature": 1.0,
    "pairs.dropout_max_new_tokens": 16,
    "pairs.batch_size": 32,
    **TOY_TRAIN,
    "train.weight_decay": 0.0,
    "train.max_length": 160,
    "evaluate.batch_size": 64,
    "evaluate.max_new_tokens": 24,
    "register.model_name": "visalign-mpo-toy",
    "register.target_metric": "toy_steps/accuracy",
    "register.guard_metrics": ("toy_pope/f1",),
}


def problems(recipe: Recipe) -> list[str]:
    """The pairs rules and the delta-aware loss's (METHODS.md section 3); a list of problems, empty when fine."""
    m, t = recipe.pairs, recipe.train
    p = []
    others = [lt for lt in t.loss_type if lt not in MPO_LOSS_TYPES]
    if t.bco_delta and "bco_pair" in t.loss_type and others:  # every recipe: any may ask for bco_pair
        p.append(f"train.loss_type={t.loss_type}: bco_pair with MPO's delta (train.bco_delta=true) combines only "
                 f"with {MPO_LOSS_TYPES}, not {others}; drop those or set train.bco_delta=false for TRL's "
                 "bco_pair without the shift")
    if not 0 < m.threshold <= 1:
        p.append(f"pairs.threshold={m.threshold}: must be in (0, 1] (MPO: 0.9)")
    if m.numeric_rel_tol < 0:
        p.append(f"pairs.numeric_rel_tol={m.numeric_rel_tol}: must be >= 0 (MPO: 1e-3)")
    if not 0 < m.dropout_ratio < 1:
        p.append(f"pairs.dropout_ratio={m.dropout_ratio}: must be in (0, 1) (MPO: 0.5)")
    if m.dropout_temperature <= 0 or m.dropout_top_k < 0 or not 0 < m.dropout_top_p <= 1:
        p.append(f"pairs.dropout_temperature={m.dropout_temperature}, dropout_top_k={m.dropout_top_k}, "
                 f"dropout_top_p={m.dropout_top_p}: need temperature > 0, top_k >= 0, top_p in (0, 1]")
    for where, v in (("pairs.max_pairs_per_question", m.max_pairs_per_question), ("pairs.batch_size", m.batch_size),
                     ("pairs.dropout_max_new_tokens", m.dropout_max_new_tokens)):
        if v < 1:
            p.append(f"{where}={v}: must be >= 1")
    return p
