"""Multi-image toy benchmarks (MIA-DPO's kind of question), in VLMEvalKit's multi-image TSV form.

    benchmarks/toy_multi_seq.tsv   2-4 benchmark images per row; "Image1: <image>\\n...In Image{k}, " + a
                                   short question about image k (colour, shape or count)
    benchmarks/toy_multi_grid.tsv  one 2x2 collage per row (compose's grid builder, labels and all);
                                   "In Image{k}, " + a short question about cell k

The image column holds a JSON list of base64 PNGs (VLMEvalKit's multi-image rows); the evaluate
stage reads it like any other TSV. Only benchmark scenes are used, so the images stay disjoint
from the seed and train images (export.check_disjoint checks every image of every row), and the
draws come from their own child of the world's SeedSequence, so the other files do not change.
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


def write_multi_benchmarks(bench_dir: Path, scenes: list[W.Scene], image_size: int, seed: int,
                           rows: int = 48) -> dict[str, int]:
    """Write both TSVs from the benchmark scenes; returns the row count of each. A world with fewer
    than 4 benchmark images (a 2x2 grid's worth) gets none."""
    from visalign.toyworld.export import _b64_png

    if len(scenes) < 4:
        return {}

    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SEED_STREAM,)))
    renders = [W.render(s, image_size) for s in scenes]
    out: dict[str, list[list[str]]] = {name: [] for name in MULTI_BENCHMARKS}
    for i in range(rows):
        n = int(rng.integers(2, 5))
        picks = [int(x) for x in rng.choice(len(scenes), size=n, replace=False)]
        k = int(rng.integers(1, n + 1))
        q = _question(scenes[picks[k - 1]], rng, i)
        if q is not None:
            out["toy_multi_seq"].append([str(i), json.dumps([_b64_png(renders[j]) for j in picks]),
                                         sequence_prompt(q.question, n, k), q.answer, f"{q.kind}/{n}"])
        cells = [int(x) for x in rng.choice(len(scenes), size=4, replace=False)]
        k = int(rng.integers(1, 5))
        q = _question(scenes[cells[k - 1]], rng, i)
        if q is not None:
            collage = grid_collage([renders[j] for j in cells], GRID_LAYOUT, cell_size=image_size, margin=GRID_MARGIN)
            out["toy_multi_grid"].append([str(i), json.dumps([_b64_png(collage.image)]),
                                          f"In Image{k}, " + lower_first(q.question), q.answer, q.kind])
    bench_dir.mkdir(parents=True, exist_ok=True)
    for name, table in out.items():
        with open(bench_dir / f"{name}.tsv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "image", "question", "answer", "category"])
            writer.writerows(table)
    return {name: len(table) for name, table in out.items()}


def row_images(value: str) -> list[str]:
    """The base64 images of a TSV image cell: a JSON list (multi-image) or one string."""
    return json.loads(value) if value.startswith("[") else [value]
