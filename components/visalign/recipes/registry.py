"""Names that both the stages and the recipe rules need, listed once (so recipes never import a stage).

The stages take these from here (rollout's templates, train's loss names, the MPO loss's own
subset); augment's registry of implementations is checked against AUGMENTATION_NAMES by a unit test.
"""

from __future__ import annotations

# The question as put to the model, by name (rollout.prompt_template). "cot" asks for reasoning that
# ends in a single "Final answer: ..." line, which visalign.stages.correctness reads back (MPO).
COT_INSTRUCTION = "Think step by step, then end with a line 'Final answer: <answer>'."
PROMPT_TEMPLATES: dict[str, str] = {
    "plain": "{question}",
    "cot": "{question}\n" + COT_INSTRUCTION,
}

# TRL 1.16's DPO loss names (DPOConfig.loss_type).
LOSS_TYPES = frozenset({
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
})
# The loss types the MPO path (stages/mpo_loss.py, bco_pair with MPO's delta) computes itself.
MPO_LOSS_TYPES = ("sigmoid", "bco_pair", "sft")

# visalign.stages.augment.AUGMENTATIONS: SeVa's tensor-space diffusion noise and the pixel recipes.
AUGMENTATION_NAMES = ("diffusion", "flip", "random_resized_crop", "autoaugment", "mocov2", "simclr", "byol")
