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
