"""SeVa's profile (METHODS.md section 1): its paper and toy values and its augmentation rules.

SeVa adds no stage of its own: its pipeline is the shared chain (visalign/stages/: sample, augment,
rollout, filter, train, evaluate, register) with augment's diffusion noise, and its values are the
dataclass defaults in recipes/params.py.
"""

from __future__ import annotations

from typing import Any

from visalign.recipes.params import TOY_TRAIN, Recipe
from visalign.recipes.registry import AUGMENTATION_NAMES

PAPER: dict[str, Any] = {}

# Scaled down for toyworld's tiny model on two CPU cores: a few hundred prompts, one-token answers.
TOY: dict[str, Any] = {
    "sample.num_prompts": 240,
    "rollout.batch_size": 32,
    "rollout.max_new_tokens": 8,
    **TOY_TRAIN,
    "train.max_length": 128,
    "evaluate.batch_size": 64,
    "evaluate.max_new_tokens": 8,
    "register.model_name": "visalign-seva-toy",
    "register.target_metric": "toy_pope/f1",
    "register.guard_metrics": ("toy_mc/accuracy",),
}


def problems(recipe: Recipe) -> list[str]:
    """The augment rules (SeVa's diffusion noise and the augmentation name); empty when fine."""
    a = recipe.augment
    p = []
    if not 0 <= a.diffusion_step < a.diffusion_timesteps:
        p.append(f"augment.diffusion_step={a.diffusion_step}: must be in [0, diffusion_timesteps="
                 f"{a.diffusion_timesteps}); SeVa uses 500 (weak) or 800 (strong)")
    if not 0 < a.beta_start < a.beta_end < 1:
        p.append(f"augment.beta_start={a.beta_start}, beta_end={a.beta_end}: need 0 < beta_start < beta_end < 1")
    if a.name not in AUGMENTATION_NAMES:
        p.append(f"augment.name={a.name!r}: unknown augmentation; choose one of {sorted(AUGMENTATION_NAMES)}")
    return p
