"""Multi-image toy benchmarks (MIA-DPO's kind of question), in VLMEvalKit's multi-image TSV form.

    benchmarks/toy_multi_seq.tsv   2-4 benchmark images per row; "Image1: <image>\\n...In Image{k}, " + a
                                   short question about image k (colour, shape or count)
    benchmarks/toy_multi_grid.tsv  one 2x2 collage per row (compose's grid builder, labels and all);
                                   "In Image{k}, " + a short question about cell k

The image column holds a JSON list of base64 PNGs (VLMEvalKit's multi-image rows); the evaluate
stage reads it like any other TSV. Only benchmark scenes are used, so the images stay disjoint
from the seed and train images (export.check_disjoint checks every image of every row).
toy_multi_seq is MIA-DPO's target: over 1,000 rows by default, on the whole held-out pool;
toy_multi_grid is a guard: 48 rows on the guards' images. Each draws from its own grandchild of
the world's SeedSequence, so neither's size changes the other file, nor the other files.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from visalign.mia_dpo.compose import grid_collage, lower_first, sequence_prompt
from visalign.toyworld import world as W

MULTI_BENCHMARKS = ("toy_multi_seq", "toy_multi_grid")
SEED_STREAM = 5  # export.build_world spawns children 0-4 of the world's SeedSequence; this is the next
GRID_LAYOUT, GRID_MARGIN = "2x2", 6


def _question(scene: W.Scene, rng: np.random.Generator, turn: int) -> W.Question | None:
    return W.first_available(W.short_question, scene, W.rotate(tuple(W.SHORT_KINDS), turn), rng)


def write_multi_benchmarks(bench_dir: Path, seq_scenes: list[W.Scene], grid_scenes: list[W.Scene],
                           image_size: int, seed: int, *, seq_rows: int, grid_rows: int) -> dict[str, int]:
    """toy_multi_seq (`seq_rows` rows on `seq_scenes`: the held-out pool) and toy_multi_grid
    (`grid_rows` on `grid_scenes`: the guards' images); returns the row count of each written. A
    benchmark with fewer than 4 scenes (a 2x2 grid's worth, 4 images a sequence at most) gets none."""
    from visalign.toyworld.export import _b64_png

    bench_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, int] = {}
    for name, scenes, rows, make in (("toy_multi_seq", seq_scenes, seq_rows, _seq_row),
                                     ("toy_multi_grid", grid_scenes, grid_rows, _grid_row)):
        if len(scenes) < 4:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAM, MULTI_BENCHMARKS.index(name))))
        renders = [W.render(s, image_size) for s in scenes]
        images = [_b64_png(r) for r in renders]  # encoded once: a pool image recurs across rows
        table = [row for i in range(rows) if (row := make(i, scenes, renders, images, image_size, rng)) is not None]
        with open(bench_dir / f"{name}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "image", "question", "answer", "category"])
            writer.writerows(table)
        out[name] = len(table)
    return out


def _seq_row(i: int, scenes, renders, images, image_size: int, rng: np.random.Generator) -> list[str] | None:
    n = int(rng.integers(2, 5))
    picks = [int(x) for x in rng.choice(len(scenes), size=n, replace=False)]
    k = int(rng.integers(1, n + 1))
    q = _question(scenes[picks[k - 1]], rng, i)
    if q is None:
        return None
    return [str(i), json.dumps([images[j] for j in picks]), sequence_prompt(q.question, n, k), q.answer,
            f"{q.kind}/{n}"]


def _grid_row(i: int, scenes, renders, images, image_size: int, rng: np.random.Generator) -> list[str] | None:
    from visalign.toyworld.export import _b64_png

    cells = [int(x) for x in rng.choice(len(scenes), size=4, replace=False)]
    k = int(rng.integers(1, 5))
    q = _question(scenes[cells[k - 1]], rng, i)
    if q is None:
        return None
    collage = grid_collage([renders[j] for j in cells], GRID_LAYOUT, cell_size=image_size, margin=GRID_MARGIN)
    return [str(i), json.dumps([_b64_png(collage.image)]), f"In Image{k}, " + lower_first(q.question), q.answer,
            q.kind]


def row_images(value: str) -> list[str]:
    """The base64 images of a TSV image cell: a JSON list (multi-image) or one string."""
    return json.loads(value) if value.startswith("[") else [value]
