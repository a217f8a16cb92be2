"""MIA-DPO's profile (METHODS.md section 2): its paper and toy values and its compose/select rules.

The stages it adds live in visalign/mia_dpo/ (compose, attention ratios, select); their
parameters are ComposeParams and SelectParams in recipes/params.py.
"""

from __future__ import annotations

from typing import Any

from visalign.recipes.params import GRID_THRESHOLD_IMAGES, SEQUENCE_THRESHOLD_IMAGES, TOY_TRAIN, Recipe

# MIA-DPO: reference answers are the chosen side; sigmoid DPO, LoRA r128/a256, lr 5e-5 linear,
# warmup 0.1, ZeRO-2, 3 epochs, no repeats; global batch 64 = 1 per device x 8 accumulated x 8 GPUs.
# max_length 4096: LLaVA-1.5 spends 576 tokens per image, so a 5-image sequence prompt is ~2.9k
# tokens before its text and a 512-token answer; the default 2048 would cut image tokens.
PAPER: dict[str, Any] = {
    "rollout.capture_attention": True, "train.max_length": 4096, "train.lora_r": 128, "train.lora_alpha": 256,
    "train.learning_rate": 5e-5, "train.lr_scheduler": "linear", "train.warmup_ratio": 0.1,
    "train.deepspeed": "zero2", "train.num_epochs": 3.0, "train.data_repeats": 1,
    "register.model_name": "visalign-mia-dpo",
}

# Scaled down for toyworld's tiny model on two CPU cores.
TOY: dict[str, Any] = {
    "sample.num_prompts": 240,
    "compose.cell_size": 64,
    "compose.margin": 6,
    "rollout.batch_size": 16,
    "rollout.max_new_tokens": 8,
    "select.max_length_ratio": 8.0,
    **TOY_TRAIN,
    "train.max_length": 400,
    "train.num_epochs": 2.0,
    "evaluate.batch_size": 32,
    "evaluate.max_new_tokens": 8,
    "register.model_name": "visalign-mia-dpo-toy",
    "register.target_metric": "toy_multi_seq/accuracy",
    "register.guard_metrics": ("toy_pope/f1",),
}


def problems(recipe: Recipe) -> list[str]:
    """The compose and select rules (METHODS.md section 2); a list of problems, empty when fine."""
    c, s, r, name = recipe.compose, recipe.select, recipe.rollout, recipe.name
    p = []
    if name == "mia-dpo" and not r.capture_attention:  # select reads the attention ratio of every response
        p.append("rollout.capture_attention=False: mia-dpo's select stage needs each response's attention to the "
                 "images (without it every response is dropped as no_attention); set rollout.capture_attention=true")
    known = ("sequence", "grid", "pic_in_pic")
    p += [f"compose.formats: {f!r}: unknown; choose from {known}" for f in c.formats if f not in known]
    if c.distractor_group not in ("image_dir", "source"):
        p.append(f"compose.distractor_group={c.distractor_group!r}: choose image_dir or source")
    if not c.formats or len(c.mix) != len(c.formats) or any(w < 0 for w in c.mix) or sum(c.mix) <= 0:
        p.append(f"compose.mix={c.mix}: needs one weight >= 0 per format {c.formats}, not all 0")
    p += [f"compose.sequence_images: {n}: must be in {SEQUENCE_THRESHOLD_IMAGES} (a threshold exists for those)"
          for n in c.sequence_images if n not in SEQUENCE_THRESHOLD_IMAGES]
    layouts = ("1x2", "1x3", "2x2", "2x3", "3x3")
    p += [f"compose.grid_layouts: {g!r}: unknown; choose from {layouts}" for g in c.grid_layouts if g not in layouts]
    if ("sequence" in c.formats and not c.sequence_images) or ("grid" in c.formats and not c.grid_layouts):
        p.append("compose.sequence_images / grid_layouts: a format in use needs at least one choice")
    if c.cell_size < 8 or c.margin < 0:
        p.append(f"compose.cell_size={c.cell_size}, margin={c.margin}: need cell_size >= 8 and margin >= 0")
    if not 0 < c.pip_scale < 1:
        p.append(f"compose.pip_scale={c.pip_scale}: must be in (0, 1) (MIA-DPO: 0.7)")
    if "pic_in_pic" in c.formats and not c.pip_phrases:
        p.append("compose.pip_phrases=(): give at least one opening phrase")
    for where, got, want in (("select.sequence_thresholds", s.sequence_thresholds, SEQUENCE_THRESHOLD_IMAGES),
                             ("select.grid_thresholds", s.grid_thresholds, GRID_THRESHOLD_IMAGES)):
        if len(got) != len(want):
            p.append(f"{where}={got}: needs one threshold per image count {want}")
        p += [f"{where}: {t}: must be in [0, 1]" for t in got if not 0 <= t <= 1]
    if not 0 <= s.pip_threshold <= 1:
        p.append(f"select.pip_threshold={s.pip_threshold}: must be in [0, 1]")
    if s.max_reference_chars < 1 or s.histogram_bins < 1:
        p.append(f"select.max_reference_chars={s.max_reference_chars}, histogram_bins={s.histogram_bins}: must be >= 1")
    if s.max_length_ratio is not None and s.max_length_ratio < 1:
        p.append(f"select.max_length_ratio={s.max_length_ratio}: must be >= 1 or None (off)")
    if s.max_edit_distance is not None and s.max_edit_distance < 0:
        p.append(f"select.max_edit_distance={s.max_edit_distance}: must be >= 0 or None (off)")
    if r.attention_layer is not None and r.attention_layer < 0:
        p.append(f"rollout.attention_layer={r.attention_layer}: must be >= 0 or None (the middle layer)")
    return p
