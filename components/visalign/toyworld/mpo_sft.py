"""The MPO demo's base model: toyworld's SFT mix plus chain-of-thought examples.

MPO samples step-by-step answers ending in "Final answer: X"; the standard toy model only knows
one-word answers, so every sample would be a format negative and no correctness pair could form.
These examples (toyworld.steps: counting, comparing, locating on the train images, asked with
rollout's "cot" template) teach that format. Opt-in (`train_mpo_base_model`), like IPA's: the
other recipes keep their base model; MPO's numbers are for a base model that also learned it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from visalign.stages.rollout import render_question
from visalign.toyworld import sft, steps
from visalign.toyworld.export import LLAVA_FILE, WORLD_FILE

log = logging.getLogger("visalign.toyworld")

# Fewer than the standard 1,500 steps (the mix is a third larger, each step slower): what the measured
# MPO demo used on two shared CPU cores (~1.3 s/step there); the format is learnt well before the end.
DEFAULT_MPO_BASE_STEPS = 1000


def cot_examples(split_dir: Path, processor, seed: int = 0) -> list[sft.Example]:
    """Step questions with their worked answers, image indices as sft.load_examples numbers them."""
    from PIL import Image

    entries = json.loads((split_dir / LLAVA_FILE).read_text(encoding="utf-8"))
    image_index: dict[str, int] = {}
    for e in entries:
        image_index.setdefault(e["image"], len(image_index))
    first = Image.open(split_dir / entries[0]["image"]).convert("RGB")  # prompt ids do not depend on the image
    tok = processor.tokenizer
    examples, cache = [], {}
    for rel, question, q in steps.step_examples(split_dir, seed):
        if question not in cache:
            cache[question] = sft.prompt_ids(processor, render_question(question, "cot"), first)
        ids = tok(" " + q.target(), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append(sft.Example(image_index[rel], cache[question], ids))
    return examples


MPO_VOCAB_SIZE = 640  # the standard 420 plus room for the step phrases' words


def build_mpo_untrained_model(world_dir: str | os.PathLike, out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """The tiny VLM with a tokenizer that also knows the chain-of-thought phrases (steps.cot_corpus)."""
    from visalign.toyworld.export import CORPUS_FILE
    from visalign.toyworld.model import build_tiny_vlm

    corpus = Path(world_dir, CORPUS_FILE).read_text(encoding="utf-8").splitlines() + steps.cot_corpus()
    image_size = json.loads(Path(world_dir, WORLD_FILE).read_text())["image_size"]
    return build_tiny_vlm(out_dir, corpus, image_size=image_size, seed=seed, vocab_size=MPO_VOCAB_SIZE)


def train_mpo_base_model(world_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                         steps: int = DEFAULT_MPO_BASE_STEPS, seed: int = 0, **sft_options) -> Path:
    """train_base_model's recipe on the standard mix plus chain-of-thought step questions."""
    return sft.train_base_model(world_dir, out_dir, steps=steps, seed=seed, build_model=build_mpo_untrained_model,
                                extra_examples=cot_examples, mix="standard+mpo_cot", **sft_options)
