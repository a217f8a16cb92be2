"""toyworld: a synthetic shapes world and a tiny VLM, so tests and the demo need no downloads.

    from visalign.toyworld import build_world, train_base_model
    world = build_world("world/", seed=0)                        # seeds, SFT data, benchmarks
    model = train_base_model("world/", "base_model/", steps=DEFAULT_BASE_STEPS)  # the demo's base model

torch and transformers are imported only inside the model functions, so importing this package
(for the world alone) stays light.
"""

from visalign.toyworld.export import (
    BENCHMARKS,
    FORMAT_VERSION,
    build_world,
    check_disjoint,
    decode_image,
    read_tsv,
    world_is_current,
)
from visalign.toyworld.model import CHAT_TEMPLATE, build_tiny_vlm, train_tokenizer
from visalign.toyworld.sft import DEFAULT_BASE_STEPS, build_untrained_model, train_base_model
from visalign.toyworld.world import (
    COLOURS,
    MC_SUFFIX,
    OBJECTS,
    POPE_STRATEGIES,
    SHAPES,
    Question,
    Scene,
    Shape,
    WorldStats,
    mc_prompt,
    pixel_hash,
    pope_negative,
    pope_pair,
    render,
    sample_scene,
    text_corpus,
)

__all__ = [
    "BENCHMARKS", "CHAT_TEMPLATE", "COLOURS", "DEFAULT_BASE_STEPS", "FORMAT_VERSION", "MC_SUFFIX", "OBJECTS",
    "POPE_STRATEGIES", "SHAPES",
    "Question", "Scene", "Shape", "WorldStats", "build_tiny_vlm", "build_untrained_model", "build_world",
    "check_disjoint", "decode_image", "mc_prompt", "pixel_hash", "pope_negative", "pope_pair", "read_tsv",
    "render", "sample_scene", "text_corpus", "train_base_model", "train_tokenizer", "world_is_current",
]
