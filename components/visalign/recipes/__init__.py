"""The recipes: every stage's parameters with the papers' defaults, and each paper's profile.

    recipe = load("seva", profile="toy", overrides={"train.beta": 0.2})

params.py    the stage parameter dataclasses (the one home of every parameter and its help text)
registry.py  names the stages and the rules share (prompt templates, loss types, augmentations)
seva.py, mia_dpo.py, mpo.py, ipa.py   each paper's paper/toy values and its own rules
validate.py  the shared rules, and every paper's, checked before any work starts
loading.py   profiles, overrides and CLI flags derived from the dataclasses

This package imports nothing else of visalign: the stages import it, never the reverse.
"""

from visalign.recipes.ipa import (
    IPA_TOY_FEEDBACK_PROMPT,
    IPA_TOY_REFERENCE_FEEDBACK_PROMPT,
    IPA_TOY_REFINE_PROMPT,
    IPA_TOY_VERIFY_PROMPT,
    IPA_TOY_VERIFY_RETRY_SUFFIX,
)
from visalign.recipes.loading import (
    PAPER,
    PROFILES,
    TOY,
    add_arguments,
    apply_overrides,
    load,
    names,
    recipe_from_args,
)
from visalign.recipes.params import (
    GRID_THRESHOLD_IMAGES,
    IPA_FEEDBACK_PROMPT,
    IPA_MAX_ROUNDS,
    IPA_REFERENCE_FEEDBACK_PROMPT,
    IPA_REFINE_PROMPT,
    IPA_VERIFY_PROMPT,
    IPA_VERIFY_RETRY_SUFFIX,
    SEQUENCE_THRESHOLD_IMAGES,
    SHORT_ANSWER_SUFFIX,
    STAGES,
    AugmentParams,
    ComposeParams,
    ConfigError,
    EvaluateParams,
    FilterParams,
    IpaParams,
    MpoPairsParams,
    Recipe,
    RegisterParams,
    RolloutParams,
    SampleParams,
    SelectParams,
    TrainParams,
    VerifyParams,
)
from visalign.recipes.validate import validate

__all__ = [
    "AugmentParams", "ComposeParams", "ConfigError", "EvaluateParams", "FilterParams", "GRID_THRESHOLD_IMAGES",
    "IPA_FEEDBACK_PROMPT", "IPA_MAX_ROUNDS", "IPA_REFERENCE_FEEDBACK_PROMPT", "IPA_REFINE_PROMPT",
    "IPA_TOY_FEEDBACK_PROMPT", "IPA_TOY_REFERENCE_FEEDBACK_PROMPT", "IPA_TOY_REFINE_PROMPT", "IPA_TOY_VERIFY_PROMPT",
    "IPA_TOY_VERIFY_RETRY_SUFFIX", "IPA_VERIFY_PROMPT", "IPA_VERIFY_RETRY_SUFFIX", "IpaParams", "MpoPairsParams",
    "PAPER", "PROFILES", "Recipe", "RegisterParams", "RolloutParams", "SEQUENCE_THRESHOLD_IMAGES",
    "SHORT_ANSWER_SUFFIX", "STAGES", "SampleParams", "SelectParams", "TOY", "TrainParams", "VerifyParams",
    "add_arguments", "apply_overrides", "load", "names", "recipe_from_args", "validate",
]
