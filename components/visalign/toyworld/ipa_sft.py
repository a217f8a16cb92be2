"""The IPA demo's base model: toyworld's SFT mix plus verification and revision examples.

The tiny model knows short answers only; asked IPA's verification prompt it answers garbage, so
the policy-as-verifier would leave every response unparseable. Ground truth is known in the toy
world, so these examples teach the formats of recipes' toy IPA templates:

- verification (IPA_TOY_VERIFY_PROMPT): question, reference, response -> four verdicts in the
  compact form verify.parse_verdict reads ("yes yes yes yes"; "no no no yes" for a wrong answer
  of the asked kind; "no no no no" for an answer of another kind, which ignores the instruction);
- feedback and refinement (IPA_TOY_*_PROMPT): the target is the correct answer (toy "feedback" is
  what the answer should be; the reference-guided kind can read it off the prompt).

This is opt-in (`train_ipa_base_model`), not part of `train_base_model`: the other recipes keep
their base model. IPA's numbers are therefore for a base model that also learned these formats.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from visalign.recipes import (
    IPA_TOY_FEEDBACK_PROMPT,
    IPA_TOY_REFERENCE_FEEDBACK_PROMPT,
    IPA_TOY_REFINE_PROMPT,
    IPA_TOY_VERIFY_PROMPT,
)
from visalign.toyworld import sft
from visalign.toyworld import world as W
from visalign.toyworld.export import LLAVA_FILE

log = logging.getLogger("visalign.toyworld")

# More steps than train_base_model's default (1,500): the mix is about twice as large. Measured on
# the default world (seed 0, 2 threads), as a verifier on 400 seed questions (a right and a wrong
# answer each): 2,000 steps answered "no no no no" to everything (accuracy 0.50, no pair could
# form); 3,000 steps: accuracy 0.58, verifies 40.5% of right answers and 24.5% of wrong ones.
DEFAULT_IPA_BASE_STEPS = 3000
KINDS = {"yes_no": ("yes", "no"), "colour": tuple(W.COLOURS), "shape": W.SHAPES,
         "count": tuple(str(n) for n in range(1, W.MAX_SHAPES + 1))}
VERDICT_RIGHT, VERDICT_WRONG, VERDICT_OFF_KIND = "yes yes yes yes", "no no no yes", "no no no no"
# Share of entries that also get revision examples: the verification format matters most (without
# it no pair can form); revision examples dilute the standard mix the benchmarks measure.
REVISION_SHARE = 0.25


def answer_kind(answer: str) -> str | None:
    return next((k for k, values in KINDS.items() if answer in values), None)


def _format_examples(entry: dict, rng: random.Random) -> list[tuple[str, str]]:
    """(prompt, target) pairs for one LLaVA entry of the train split; none for multiple choice."""
    question = entry["conversations"][0]["value"].removeprefix("<image>\n")
    answer = entry["conversations"][1]["value"]
    kind = answer_kind(answer)
    if kind is None:
        return []
    wrong = rng.choice([a for a in KINDS[kind] if a != answer])
    off_kind = rng.choice([a for k, values in KINDS.items() if k != kind for a in values])
    response, verdict = rng.choice([(answer, VERDICT_RIGHT), (answer, VERDICT_RIGHT), (wrong, VERDICT_WRONG),
                                    (off_kind, VERDICT_OFF_KIND)])
    out = [(IPA_TOY_VERIFY_PROMPT.format(question=question, reference=answer, response=response), verdict)]
    if rng.random() >= REVISION_SHARE:
        return out
    seen = rng.choice([answer, wrong])
    if rng.random() < 0.5:
        out.append((IPA_TOY_FEEDBACK_PROMPT.format(question=question, response=seen), answer))
    else:
        out.append((IPA_TOY_REFERENCE_FEEDBACK_PROMPT.format(question=question, response=seen, reference=answer),
                    answer))
    out.append((IPA_TOY_REFINE_PROMPT.format(question=question, response=seen, feedback=rng.choice([answer, seen])),
                answer))
    return out


def format_examples(split_dir: Path, processor, seed: int = 0) -> list[sft.Example]:
    """Verification and revision examples on the split's images (image indices as load_examples)."""
    entries = json.loads((split_dir / LLAVA_FILE).read_text(encoding="utf-8"))
    image_index: dict[str, int] = {}
    for e in entries:
        image_index.setdefault(e["image"], len(image_index))
    from PIL import Image

    first = Image.open(split_dir / entries[0]["image"]).convert("RGB")  # prompt ids do not depend on the image
    tok = processor.tokenizer
    rng = random.Random(seed)
    examples = []
    for e in entries:
        for prompt, target in _format_examples(e, rng):
            ids = tok(" " + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            examples.append(sft.Example(image_index[e["image"]], sft.prompt_ids(processor, prompt, first), ids))
    return examples


def train_ipa_base_model(world_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                         steps: int = DEFAULT_IPA_BASE_STEPS, seed: int = 0, **sft_options) -> Path:
    """train_base_model's recipe on the standard mix plus the IPA formats."""
    return sft.train_base_model(world_dir, out_dir, steps=steps, seed=seed, extra_examples=format_examples,
                                mix="standard+ipa_formats", **sft_options)
