"""Step-by-step questions for MPO: counting, comparing and locating, with ground truth and a
short worked rationale ending in "Final answer: X" (the format visalign.stages.correctness reads).

    seeds/steps.json          LLaVA rows on the seed images: step questions with their answer, plus
                              open questions with no answer (gpt value null: DropoutNTP's seeds)
    benchmarks/toy_steps.tsv  VLMEvalKit TSV with an answer_type column (evaluate's COT task): MPO's
                              target, 2 questions on each image of the held-out pool (over
                              1,000 rows by default; held out, as every benchmark)

`write_step_data` adds both to a built world (idempotent; the demo writes them for every recipe).
`step_examples` is the base model's chain-of-thought SFT mix (visalign.toyworld.mpo_sft).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visalign.schema import stable_id
from visalign.toyworld import world as W

STEPS_SEEDS = "steps.json"
STEPS_BENCHMARK = "toy_steps"
OPEN_QUESTION = "Describe the shapes in the image."  # no ground truth: DropoutNTP's kind of seed
OPEN_SHARE = 0.25  # share of seed images that also get the open question


@dataclass(frozen=True)
class StepQuestion:
    question: str
    answer: str
    answer_type: str  # a visalign.stages.correctness scorer or alias
    kind: str  # counting, comparing, locating
    rationale: str

    def target(self) -> str:
        """The chain-of-thought answer the SFT mix teaches."""
        return f"{self.rationale}\nFinal answer: {self.answer}"


def _plurals(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def _plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else _plurals(word)}"


def counting(scene: W.Scene, rng: np.random.Generator) -> StepQuestion:
    colour = list(W.COLOURS)[int(rng.integers(len(W.COLOURS)))]
    found = [s for s in scene.shapes if s.colour == colour]
    seen = ", ".join(f"a {s.colour} {s.shape}" for s in found) or f"no {colour} shape"
    return StepQuestion(f"How many {colour} shapes are there?", str(len(found)), "numeric", "counting",
                        f"I see {seen}. That is {len(found)}.")


def comparing(scene: W.Scene, rng: np.random.Generator) -> StepQuestion:
    a, b = (W.SHAPES[i] for i in rng.choice(len(W.SHAPES), size=2, replace=False))
    na, nb = (sum(s.shape == x for s in scene.shapes) for x in (a, b))
    return StepQuestion(f"Are there more {_plurals(a)} than {_plurals(b)}?", "yes" if na > nb else "no", "yes_no", "comparing",
                        f"There are {_plural(na, a)} and {_plural(nb, b)}.")


def locating(scene: W.Scene, rng: np.random.Generator) -> StepQuestion | None:
    counts = {o: sum(s.obj == o for s in scene.shapes) for o in scene.objects}
    pool = [s for s in scene.shapes if counts[s.obj] == 1]
    if not pool:
        return None
    s = pool[int(rng.integers(len(pool)))]
    return StepQuestion(f"Where is the {s.colour} {s.shape}?", s.cell, "vqa", "locating",
                        f"The {s.colour} {s.shape} is in the {s.cell} cell.")


KINDS: dict[str, Callable[[W.Scene, np.random.Generator], StepQuestion | None]] = {
    "counting": counting, "comparing": comparing, "locating": locating}


def questions_for(scene: W.Scene, i: int, rng: np.random.Generator, per_image: int) -> list[StepQuestion]:
    """Up to `per_image` kinds in turn (rotated by image index, so the mix stays balanced)."""
    out = []
    for kind in W.rotate(tuple(KINDS), i):
        q = KINDS[kind](scene, rng)
        if q is not None and len(out) < per_image:
            out.append(q)
    return out


def _scenes(path: Path) -> list[W.Scene]:
    return [W.Scene.from_dict(d) for d in json.loads(path.read_text())]


def write_step_data(world_dir: str | Path, *, seed: int = 0, per_image: int = 2) -> dict[str, int]:
    """seeds/steps.json and benchmarks/toy_steps.tsv for a built world (skipped when present)."""
    from visalign.toyworld.export import POOL_BENCHMARK, TSV_COLUMNS, held_out_images, read_tsv

    world = Path(world_dir)
    seeds_path, bench_path = world / "seeds" / STEPS_SEEDS, world / "benchmarks" / f"{STEPS_BENCHMARK}.tsv"
    if seeds_path.exists() and bench_path.exists():
        rows = json.loads(seeds_path.read_text())
        return {"step_seeds": sum(len(r["conversations"]) // 2 for r in rows), "step_bench": len(read_tsv(bench_path))}
    rng_seeds, rng_bench = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, 3]).spawn(2))
    rows = []
    images = sorted(p.name for p in (world / "seeds" / "images").glob("seed_*.png"))
    for i, scene in enumerate(_scenes(world / "seeds" / "scenes.json")):
        rel = f"images/{images[i]}"
        turns = []
        for q in questions_for(scene, i, rng_seeds, per_image):
            turns += [{"from": "human", "value": f"<image>\n{q.question}"}, {"from": "gpt", "value": q.answer}]
        if rng_seeds.random() < OPEN_SHARE:
            turns += [{"from": "human", "value": f"<image>\n{OPEN_QUESTION}"}, {"from": "gpt", "value": None}]
        rows.append({"id": stable_id("toyworld", "steps", rel), "image": rel, "conversations": turns})
    seeds_path.write_text(json.dumps(rows, indent=1))
    by_image = held_out_images(world, POOL_BENCHMARK)  # every held-out pool image and its scene
    n = 0
    with open(bench_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow([*TSV_COLUMNS, "answer_type"])
        for i, (b64, scene) in enumerate(by_image.items()):
            for q in questions_for(scene, i, rng_bench, per_image):
                writer.writerow([n, b64, q.question, q.answer, q.kind, q.answer_type])
                n += 1
    return {"step_seeds": sum(len(r["conversations"]) // 2 for r in rows), "step_bench": n}


def step_examples(split_dir: Path, seed: int = 0, per_image: int = 2) -> list[tuple[str, str, StepQuestion]]:
    """(image path relative to the split, question, question object) for every train-split image."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    images = sorted(p.name for p in (split_dir / "images").glob("train_*.png"))
    out = []
    for i, scene in enumerate(_scenes(split_dir / "scenes.json")):
        for q in questions_for(scene, i, rng, per_image):
            out.append((f"images/{images[i]}", q.question, q))
    return out


def cot_corpus() -> list[str]:
    """Every phrase of the step questions and worked answers plus the "cot" instruction, for the
    tokenizer of MPO's base model: enumerated, so whole words become tokens and a chain-of-thought
    example stays short (byte-level pieces would triple its length)."""
    from visalign.stages.rollout import render_question

    lines = [OPEN_QUESTION]
    for colour, shape in W.OBJECTS:
        lines += [render_question(f"Where is the {colour} {shape}?", "cot"),
                  f"I see a {colour} {shape}, a {colour} {shape}. That is 2.",
                  f"The {colour} {shape} is in the {W.CELLS[W.OBJECTS.index((colour, shape)) % 9]} cell."]
    for colour in W.COLOURS:
        lines += [render_question(f"How many {colour} shapes are there?", "cot"), f"I see no {colour} shape."]
    for a in W.SHAPES:
        for b in W.SHAPES:
            if a != b:
                lines.append(render_question(f"Are there more {_plurals(a)} than {_plurals(b)}?", "cot"))
        lines += [f"There are {_plural(n, a)} and {_plural(n, a)}." for n in range(W.MAX_SHAPES + 1)]
    for cell in W.CELLS:
        lines.append(f"is in the {cell} cell.\nFinal answer: {cell}")
    lines += [f"That is {n}.\nFinal answer: {n}" for n in range(W.MAX_SHAPES + 1)]
    lines += ["Final answer: yes", "Final answer: no"]
    return lines * 4  # repeated, so BPE merges these words before rarer byte pairs

