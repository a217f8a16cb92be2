"""Tiny assets for the stage tests: an untrained tiny LLaVA and a handful of seed images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

COLOURS = ["red", "green", "blue", "yellow"]
CORPUS = ["What colour is the circle?", "Is there a red circle?", "How many shapes are there?",
          "yes", "no", "1", "2", "3"] + COLOURS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from visalign.toyworld.model import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_model"), CORPUS * 5, seed=0)


def draw(colour: str, size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((10, 10, 40, 40), fill=colour)
    return im


@pytest.fixture
def llava_seeds(tmp_path) -> Path:
    """A LLaVA-665k style JSON: 8 images x 3 questions, a corrupt image, a malformed row."""
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(8):
        colour = COLOURS[i % 4]
        draw(colour).save(tmp_path / "images" / f"{i}.png")
        turns = []
        for q, a in (("What colour is the circle?", colour), ("How many shapes are there?", "1"),
                     ("Is there a red circle?", "yes" if colour == "red" else "no")):
            turns += [{"from": "human", "value": f"<image>\n{q}\nAnswer the question using a single word or phrase."},
                      {"from": "gpt", "value": a}]
        rows.append({"id": f"img{i}", "image": f"images/{i}.png", "conversations": turns})
    (tmp_path / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows.append({"id": "corrupt", "image": "images/corrupt.png",
                 "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]})
    rows.append({"id": "broken", "image": "images/0.png"})  # no conversations
    rows.append({"id": "text-only", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    return path
