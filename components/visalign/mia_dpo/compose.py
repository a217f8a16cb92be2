"""Compose (MIA-DPO): turn single-image prompts into multi-image prompts with distractor images.

Three builders (METHODS.md section 2), each adding unrelated images from the same source:

- sequence:   the target among 1-4 distractors, order shuffled; the prompt names every image
              ("Image1: <image>\\nImage2: <image>\\n...In Image{k}, " + the question, first letter
              lower-cased). "<image>" marks where each image goes (rollout and train turn the
              markers into the chat template's image parts, so the template stays the model's).
- grid:       one collage: every image fitted into a square cell (aspect kept, white padding),
              margins between cells, an "Image{n}" label at each cell's top-left; the prompt is
              "In Image{k}, " + the question. The cell boxes are recorded for the selection stage.
- pic_in_pic: the target shrunk to a fraction of a distractor's size and pasted at its centre;
              the prompt opens with one of a set of phrases ("For the image in the center, ").

Which builder a seed prompt goes to is drawn (seeded, per prompt) from the `mix` weights. The
output is a prompts.jsonl of ordinary Prompt rows (images beside it), so the rollout stage reads
it unchanged; `meta` carries the format, the target and the geometry.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from visalign import inputs, schema
from visalign.inputs import output_path
from visalign.recipes import ComposeParams
from visalign.report import StageReport, progress
from visalign.schema import Prompt
from visalign.stages.rollout import IMAGE_MARKER  # where an image goes inside a prompt's text

log = logging.getLogger(__name__)

FORMATS = ("sequence", "grid", "pic_in_pic")
GRID_LAYOUTS = {"1x2": (1, 2), "1x3": (1, 3), "2x2": (2, 2), "2x3": (2, 3), "3x3": (3, 3)}


class TooFewDistractors(ValueError):
    """The source has fewer usable images (besides the target's) than the builder needs."""


def lower_first(question: str) -> str:
    question = question.strip()
    return question[:1].lower() + question[1:]


# ---- the three builders: pure functions of images ------------------------------------------

def sequence_prompt(question: str, num_images: int, target: int) -> str:
    """'Image1: <image>\\n...ImageN: <image>\\nIn Image{target}, ' + question (target is 1-based)."""
    if not 1 <= target <= num_images:
        raise ValueError(f"target={target}: must be in 1..{num_images}")
    lines = [f"Image{i}: {IMAGE_MARKER}" for i in range(1, num_images + 1)]
    return "\n".join(lines) + f"\nIn Image{target}, " + lower_first(question)


def fit_into(img: Image.Image, width: int, height: int, fill: str = "white") -> Image.Image:
    """`img` scaled to fit width x height with its aspect kept, centred on a `fill` canvas."""
    scale = min(width / img.width, height / img.height)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    canvas = Image.new("RGB", (width, height), fill)
    canvas.paste(img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), ((width - w) // 2, (height - h) // 2))
    return canvas


def label_font(cell_size: int, size: int | None) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font (no font file to ship), scaled to the cell unless given."""
    return ImageFont.load_default(size=size or max(8, cell_size // 12))


@dataclass
class Collage:
    image: Image.Image
    cells: list[list[int]]  # [x0, y0, x1, y1] per cell, row-major: cell n is "Image{n+1}"
    labels: list[list[int]]  # the bounding box of each cell's label


def grid_collage(images: list[Image.Image], layout: str, *, cell_size: int = 448, margin: int = 40,
                 square_canvas: bool = True, font_size: int | None = None) -> Collage:
    """Images in row-major cells of `layout` (e.g. '2x3'), each labelled 'Image{n}' at its top-left.

    square_canvas pads the collage to a square with white: processors of the CLIP family resize the
    short side and centre-crop, which would cut the outer cells of a wide collage away.
    """
    rows, cols = GRID_LAYOUTS[layout]
    if len(images) != rows * cols:
        raise ValueError(f"layout {layout} needs {rows * cols} images, got {len(images)}")
    width, height = cols * cell_size + (cols + 1) * margin, rows * cell_size + (rows + 1) * margin
    side = max(width, height) if square_canvas else None
    off_x, off_y = ((side - width) // 2, (side - height) // 2) if side else (0, 0)
    canvas = Image.new("RGB", (side, side) if side else (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = label_font(cell_size, font_size)
    pad = max(2, cell_size // 64)
    cells, labels = [], []
    for n, img in enumerate(images):
        r, c = divmod(n, cols)
        x0, y0 = off_x + margin + c * (cell_size + margin), off_y + margin + r * (cell_size + margin)
        canvas.paste(fit_into(img, cell_size, cell_size), (x0, y0))
        box = draw.textbbox((x0 + pad, y0 + pad), f"Image{n + 1}", font=font)
        # a white plate behind the label keeps it readable on any image
        draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], fill="white")
        draw.text((x0 + pad, y0 + pad), f"Image{n + 1}", fill="black", font=font)
        cells.append([x0, y0, x0 + cell_size, y0 + cell_size])
        labels.append([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1])
    return Collage(canvas, cells, labels)


def pic_in_pic(target: Image.Image, background: Image.Image, scale: float = 0.7) -> tuple[Image.Image, list[int]]:
    """`target` fitted into `scale` x the background's size (aspect kept), pasted at its centre.
    Returns the composite and the pasted box [x0, y0, x1, y1]."""
    bg = background.convert("RGB").copy()
    fit = min(scale * bg.width / target.width, scale * bg.height / target.height)
    w, h = max(1, round(target.width * fit)), max(1, round(target.height * fit))
    x0, y0 = (bg.width - w) // 2, (bg.height - h) // 2
    bg.paste(target.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), (x0, y0))
    return bg, [x0, y0, x0 + w, y0 + h]


def pad_square(img: Image.Image) -> tuple[Image.Image, tuple[int, int]]:
    """`img` centred on a white square (see grid_collage's square_canvas); returns it and the offset."""
    side = max(img.size)
    dx, dy = (side - img.width) // 2, (side - img.height) // 2
    if (dx, dy) == (0, 0):
        return img, (0, 0)
    canvas = Image.new("RGB", (side, side), "white")
    canvas.paste(img, (dx, dy))
    return canvas, (dx, dy)


# ---- the stage ------------------------------------------------------------------------------

class ImagePool:
    """Distractor candidates: every distinct image of each group (compose.distractor_group: the seed
    file, or the seed file and the image's top-level folder); unreadable ones are skipped."""

    def __init__(self, prompts_dir: Path, prompts: list[Prompt], group_by: str = "image_dir"):
        self.dir, self.group_by = prompts_dir, group_by
        self.by_group: dict[tuple[str, str], list[str]] = defaultdict(list)
        for p in prompts:
            for rel in p.images:
                if rel not in self.by_group[self.group(p)]:
                    self.by_group[self.group(p)].append(rel)
        self.bad: dict[str, str] = {}  # image -> why it failed to open
        self._digests: dict[str, str] = {}

    def digest(self, rel: str) -> str:
        """Content digest: the same picture stored under two names is still the target's own image."""
        if rel not in self._digests:
            try:
                self._digests[rel] = hashlib.sha256((self.dir / rel).read_bytes()).hexdigest()
            except OSError:
                self._digests[rel] = rel
        return self._digests[rel]

    def open(self, rel: str) -> Image.Image:
        return inputs.load_rgb(self.dir / rel, f"{self.dir}/{rel}")  # decoded fully: a truncated file fails here

    def group(self, prompt: Prompt) -> tuple[str, str]:
        folder = prompt.meta.get("image_group", "") if self.group_by == "image_dir" else ""
        return prompt.source, folder

    def draw(self, prompt: Prompt, n: int, rng: random.Random) -> list[tuple[str, Image.Image]]:
        """n distractors from the prompt's group, never the prompt's own image(s)."""
        own = {self.digest(r) for r in prompt.images}
        candidates = [r for r in self.by_group[self.group(prompt)]
                      if r not in prompt.images and r not in self.bad and self.digest(r) not in own]
        rng.shuffle(candidates)
        picked: list[tuple[str, Image.Image]] = []
        for rel in candidates:
            if len(picked) == n:
                break
            try:
                picked.append((rel, self.open(rel)))
            except inputs.BadImage as e:
                self.bad[rel] = str(e)
                log.warning("compose: distractor %s skipped: %s", rel, e)
        if len(picked) < n:
            raise TooFewDistractors(f"prompt {prompt.id} ({prompt.source} row {prompt.source_row}): needs {n} "
                                    f"distractors, its source has {len(picked)} usable images besides its own")
        return picked


def _save(img: Image.Image, out: Path, key: Any) -> str:
    """Save once per key: an existing file is reused, so `key` must hold every setting that shapes it."""
    rel = f"images/{schema.stable_id(key)}.png"
    if not (out / rel).exists():
        img.save(out / rel, format="PNG")
    return rel


def _copy(pool: ImagePool, rel: str, out: Path) -> str:
    if not (out / rel).exists():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pool.dir / rel, out / rel)
    return rel


def build_sequence(p: Prompt, target: Image.Image, pool: ImagePool, rng: random.Random, params: ComposeParams,
                   out: Path) -> Prompt:
    n = rng.choice(params.sequence_images)
    distractors = pool.draw(p, n - 1, rng)
    k = rng.randrange(1, n + 1)
    order = [rel for rel, _ in distractors]
    order.insert(k - 1, p.images[0])
    images = [_copy(pool, rel, out) for rel in order]
    return _composed(p, "sequence", images, sequence_prompt(p.question, n, k), n, k, {"sources": order})


def build_grid(p: Prompt, target: Image.Image, pool: ImagePool, rng: random.Random, params: ComposeParams,
               out: Path) -> Prompt:
    layout = rng.choice(params.grid_layouts)
    rows, cols = GRID_LAYOUTS[layout]
    n = rows * cols
    distractors = pool.draw(p, n - 1, rng)
    k = rng.randrange(1, n + 1)
    order = [rel for rel, _ in distractors]
    order.insert(k - 1, p.images[0])
    imgs = [im for _, im in distractors]
    imgs.insert(k - 1, target)
    collage = grid_collage(imgs, layout, cell_size=params.cell_size, margin=params.margin,
                           square_canvas=params.square_canvas, font_size=params.label_font_size)
    rel = _save(collage.image, out, ("grid", order, layout, params.cell_size, params.margin, params.square_canvas,
                                     params.label_font_size))
    question = f"In Image{k}, " + lower_first(p.question)
    return _composed(p, "grid", [rel], question, n, k, {
        "layout": layout, "cells": collage.cells, "labels": collage.labels,
        "canvas": list(collage.image.size), "sources": order})


def build_pic_in_pic(p: Prompt, target: Image.Image, pool: ImagePool, rng: random.Random, params: ComposeParams,
                     out: Path) -> Prompt:
    ((bg_rel, background),) = pool.draw(p, 1, rng)
    composite, box = pic_in_pic(target, background, params.pip_scale)
    if params.square_canvas:  # a centre-cropping processor would otherwise shift the token map off the box
        composite, (dx, dy) = pad_square(composite)
        box = [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]
    rel = _save(composite, out, ("pic_in_pic", p.images[0], bg_rel, params.pip_scale, params.square_canvas))
    question = rng.choice(params.pip_phrases) + lower_first(p.question)
    return _composed(p, "pic_in_pic", [rel], question, 2, 1, {
        "centre_box": box, "canvas": list(composite.size), "sources": [p.images[0], bg_rel]})


BUILDERS: dict[str, Callable[..., Prompt]] = {
    "sequence": build_sequence, "grid": build_grid, "pic_in_pic": build_pic_in_pic}


def _composed(p: Prompt, fmt: str, images: list[str], question: str, num_images: int, target: int,
              extra: dict[str, Any]) -> Prompt:
    meta = {"format": fmt, "num_images": num_images, "target": target, "seed_prompt": p.id,
            "seed_question": p.question, **extra}
    return Prompt(id=schema.stable_id(p.id, fmt, images, question), images=images, question=question,
                  source=p.source, source_row=p.source_row, reference=p.reference, answer_type=p.answer_type,
                  meta=meta)


def pick_format(prompt_id: str, params: ComposeParams) -> tuple[str, random.Random]:
    """The prompt's builder, drawn from the mix; the same prompt and seed give the same draw."""
    rng = random.Random(schema.stable_id(params.seed, prompt_id))
    return rng.choices(params.formats, weights=params.mix, k=1)[0], rng


def run(*, prompts_dir: str, output_dir: str, params: ComposeParams) -> StageReport:
    """A multi-image prompt per seed prompt (with a reference answer), written as prompts.jsonl."""
    report = StageReport("compose")
    src, out = Path(prompts_dir), output_path(output_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    seeds = schema.read_rows(src / schema.PROMPTS_FILE)
    report.rows_in = len(seeds)
    pool = ImagePool(src, seeds, params.distractor_group)
    composed: list[Prompt] = []
    for p in progress(seeds, desc="compose", total=len(seeds)):
        where = f"prompt {p.id} ({p.source} row {p.source_row})"
        if not p.reference or not p.reference.strip():
            report.drop("no_reference", f"{where}: field 'reference' is empty; MIA-DPO's chosen side is the reference")
            continue
        if len(p.images) != 1:
            report.drop("not_single_image", f"{where}: field 'images' has {len(p.images)} images; seeds need one")
            continue
        fmt, rng = pick_format(p.id, params)
        try:
            target = pool.open(p.images[0])
        except inputs.BadImage as e:
            report.drop(e.reason, f"{where}: field 'images' ({p.images[0]}): {e}")
            continue
        try:
            composed.append(BUILDERS[fmt](p, target, pool, rng, params, out))
        except TooFewDistractors as e:
            report.drop("too_few_distractors", str(e))
    if not composed:
        log.warning("compose: no multi-image prompt built from %d seeds; see the drop reasons", len(seeds))
    report.rows_out = schema.write_rows(out / schema.PROMPTS_FILE, composed)
    report.extra.update(
        formats=dict(Counter(c.meta["format"] for c in composed)),
        per_format_and_images=dict(Counter(f"{c.meta['format']}/{c.meta['num_images']}" for c in composed)),
        unreadable_distractors=pool.bad)
    report.write(out)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--prompts", required=True, help="Directory with prompts.jsonl and images (sample's output).")
    parser.add_argument("--output", required=True, help="Output directory for the multi-image prompts.jsonl and images/.")
    recipes.add_arguments(parser, "compose")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "compose")
    run(prompts_dir=args.prompts, output_dir=args.output, params=recipe.compose)
    return 0
