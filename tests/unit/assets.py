"""Shared test assets: the tiny model's corpus and a drawn seed image (imported by tests in every folder)."""

from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow"]
CORPUS = ["What colour is the circle?", "Is there a red circle?", "How many shapes are there?",
          "yes", "no", "1", "2", "3"] + COLOURS


def draw(colour: str, size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=colour)
    return im


def colour_pairs(directory, n: int):
    """A pairs directory of n drawn circles: "What colour is the circle?", chosen its colour, rejected the next."""
    from visalign import schema

    (directory / "images").mkdir(parents=True)
    pairs = []
    for i in range(n):
        colour = COLOURS[i % 4]
        draw(colour).save(directory / "images" / f"{i}.png")
        pairs.append(schema.Pair(id=str(i), images=[f"images/{i}.png"], prompt="What colour is the circle?",
                                 chosen=colour, rejected=COLOURS[(i + 1) % 4], prompt_id=f"p{i}"))
    schema.write_rows(directory / schema.PAIRS_FILE, pairs)
    return directory
