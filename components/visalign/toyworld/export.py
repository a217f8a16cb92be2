"""Write a toy world to disk in the formats the real pipeline reads.

    out_dir/
      world.json                 format version, seed, counts, sizes, file and pixel hashes, object frequencies
      corpus.txt                 every question/answer text, for the tokenizer
      seeds/llava.json           LLaVA-665k conversations (the pipeline's seed prompts)
      seeds/images/seed_*.png
      seeds/scenes.json          what each image shows (ground truth for tests and analysis)
      train/llava.json           the base model's SFT data, same format, its own images; half its yes/no
                                 and short questions carry the short-answer suffix, half are bare
      train/images/train_*.png
      train/scenes.json
      benchmarks/toy_pope.tsv    VLMEvalKit TSV, yes/no, category = random/popular/adversarial
      benchmarks/toy_mc.tsv      VLMEvalKit TSV, A-D options, answer = the letter
      benchmarks/toy_short.tsv   VLMEvalKit TSV, short answers, category = colour/shape/count
      benchmarks/<name>.scenes.json  the scene of each TSV row, in row order

The benchmark images are one held-out pool (`num_heldout_images`, all distinct). The recipes'
target benchmarks use all of it (toy_pope here, toy_multi_seq in multi.py, toy_steps in steps.py:
over 1,000 rows each by default, so a difference of a few points is more than noise); the guard
benchmarks (toy_mc, toy_short, toy_multi_grid, toy_mmvet) use its first `num_bench_images`, so
they stay small and evaluation stays within the demo's time.

Each part draws from its own child of one numpy SeedSequence, so adding train images never
changes the benchmarks, and a larger pool keeps its first images (and the guards' files). Benchmark
images must never equal a train-side image: a one-shape scene can repeat by chance, so such draws
are skipped, and the written TSVs are decoded and checked again at the end (a collision raises, it
is never silently tolerated).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visalign.report import progress
from visalign.schema import stable_id
from visalign.toyworld import world as W
from visalign.toyworld.multi import row_images, write_multi_benchmarks

log = logging.getLogger("visalign.toyworld")

WORLD_FILE = "world.json"
CORPUS_FILE = "corpus.txt"
LLAVA_FILE = "llava.json"
BENCHMARKS = ("toy_pope", "toy_mc", "toy_short")
POOL_BENCHMARK = "toy_pope"  # the benchmark that shows every held-out pool image (steps.py reads it)
TSV_COLUMNS = ["index", "image", "question", "answer", "category"]
# The world's file format: bump it whenever the files a seed gives change, so the demo rebuilds a
# cached world (and retrains its base model). 1: worlds without the key (96 held-out images for
# every benchmark, suffixed train questions only). 2: the held-out pool, the train suffix mix.
FORMAT_VERSION = 2
SEED_QUESTIONS_PER_IMAGE = 3  # > SeVa's 2 per image, so the sample stage's cap has work to do
BENCH_QUESTIONS_PER_IMAGE = 2  # per benchmark: POPE's yes + no, or two kinds in turn
MAX_REJECTED_DRAWS = 10_000
# Share of the train split's yes/no and short questions that carry SHORT_ANSWER_SUFFIX. LLaVA-1.5's
# SFT data asks both ways (VQA with the suffix, conversations without); SeVa's seeds strip the
# suffix, and a base model trained on suffixed questions only answers the bare ones badly.
SUFFIXED_SHARE = 0.5


def build_world(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    num_seed_images: int = 300,
    num_train_images: int = 2500,
    num_bench_images: int = 96,
    num_heldout_images: int = 512,
    num_multi_seq_rows: int = 1024,
    num_multi_grid_rows: int = 48,
    image_size: int = 64,
) -> dict[str, Any]:
    """Build the world under `out_dir` (layout in the module docstring); returns paths and counts.

    num_heldout_images: the held-out pool (toy_pope: 2 rows per image; toy_steps: 2 per image);
    num_bench_images: the guards' share of it (its first images; toy_mc, toy_short: about 2 rows
    per image); num_multi_seq_rows / num_multi_grid_rows: rows of multi.py's two benchmarks."""
    problems = [f"{name}={v}: must be >= 1" for name, v in (
        ("num_seed_images", num_seed_images), ("num_train_images", num_train_images),
        ("num_bench_images", num_bench_images), ("num_heldout_images", num_heldout_images),
        ("num_multi_seq_rows", num_multi_seq_rows), ("num_multi_grid_rows", num_multi_grid_rows)) if v < 1]
    if num_bench_images > num_heldout_images:
        problems.append(f"num_bench_images={num_bench_images}: must be <= num_heldout_images={num_heldout_images} "
                        "(the guard benchmarks use the first images of the held-out pool); raise num_heldout_images")
    if image_size < 24:
        problems.append(f"image_size={image_size}: must be >= 24 so a small shape covers a few pixels")
    if problems:
        raise ValueError("toyworld: " + "; ".join(problems))
    out = Path(out_dir)
    # One child stream per part: the prior, each split, and the question draws of each split.
    prior_ss, seeds_ss, train_ss, bench_ss, q_ss = np.random.SeedSequence(seed).spawn(5)
    prior = W.object_prior(np.random.default_rng(prior_ss))
    seed_scenes = _scenes(seeds_ss, prior, num_seed_images)
    train_scenes = _scenes(train_ss, prior, num_train_images)
    # POPE ranks its negatives by statistics of the data a model was trained on: the train side.
    stats = W.WorldStats.from_scenes(seed_scenes + train_scenes)
    # The train split's prompt forms have their own stream, so they never change which questions
    # are drawn; the benchmarks' stream is split per benchmark in _write_benchmarks.
    q_seed_ss, q_train_ss, q_bench_ss, q_form_ss = q_ss.spawn(4)
    q_seed, q_train, q_form = (np.random.default_rng(s) for s in (q_seed_ss, q_train_ss, q_form_ss))

    hashes = {
        "seeds": _write_llava(out / "seeds", "seed", seed_scenes, image_size,
                              lambda i, sc: _seed_questions(i, sc, q_seed, stats)),
        "train": _write_llava(out / "train", "train", train_scenes, image_size,
                              lambda i, sc: _train_questions(i, sc, q_train, stats),
                              prompt=lambda q: _train_prompt(q, q_form)),
    }
    pool, rejected = _bench_scenes(np.random.default_rng(bench_ss), prior, num_heldout_images,
                                   image_size, hashes["seeds"] | hashes["train"])
    hashes["benchmarks"] = {W.pixel_hash(W.render(s, image_size)) for s in pool}
    rows = _write_benchmarks(out / "benchmarks", pool, num_bench_images, image_size, q_bench_ss, stats)
    rows.update(write_multi_benchmarks(out / "benchmarks", pool, pool[:num_bench_images], image_size, seed,
                                       seq_rows=num_multi_seq_rows, grid_rows=num_multi_grid_rows))  # MIA-DPO's
    check_disjoint(out)
    (out / CORPUS_FILE).write_text("\n".join(W.text_corpus()) + "\n", encoding="utf-8")
    return _write_manifest(out, seed, image_size, hashes, {
        "seed_images": num_seed_images, "train_images": num_train_images,
        "heldout_images": num_heldout_images, "bench_images": num_bench_images, **rejected,
        **{f"{k}_rows": v for k, v in rows.items()},
        "seed_questions": len(_read_json(out / "seeds" / LLAVA_FILE)),
        "train_questions": len(_read_json(out / "train" / LLAVA_FILE)),
    }, stats)


def _scenes(ss: np.random.SeedSequence, prior: np.ndarray, n: int) -> list[W.Scene]:
    rng = np.random.default_rng(ss)
    return [W.sample_scene(rng, prior) for _ in range(n)]


# ---- questions per split -----------------------------------------------------------------

def _seed_questions(i: int, scene: W.Scene, rng: np.random.Generator, stats: W.WorldStats) -> list[W.Question]:
    """Existence (yes or no) plus short kinds in turn: several questions per image."""
    pair = W.pope_pair(scene, W.POPE_STRATEGIES[i % 3], rng, stats)
    qs = [pair[int(rng.integers(2))]]
    for kind in W.rotate(tuple(W.SHORT_KINDS), i):
        q = W.short_question(scene, kind, rng)
        if q is not None and len(qs) < SEED_QUESTIONS_PER_IMAGE:
            qs.append(q)
    return qs


def _train_questions(i: int, scene: W.Scene, rng: np.random.Generator, stats: W.WorldStats) -> list[W.Question]:
    """Every kind the benchmarks ask, so the base model knows each format: a balanced POPE pair
    (strategy in turn), each applicable short kind, and one multiple-choice question."""
    qs = W.pope_pair(scene, W.POPE_STRATEGIES[i % 3], rng, stats)
    qs += [q for kind in W.SHORT_KINDS if (q := W.short_question(scene, kind, rng)) is not None]
    mc = W.first_available(W.mc_question, scene, W.rotate(W.MC_KINDS, i), rng)
    return qs + ([mc] if mc else [])


def _train_prompt(q: W.Question, rng: np.random.Generator) -> str:
    """The train split's prompt: a multiple-choice question keeps its letter instruction; a yes/no or
    short one carries the short-answer suffix with probability SUFFIXED_SHARE, else stays bare."""
    if q.options:
        return q.prompt()
    return q.prompt(suffix=bool(rng.random() < SUFFIXED_SHARE))


def _write_llava(split_dir: Path, split: str, scenes: list[W.Scene], image_size: int, questions,
                 prompt=W.Question.prompt) -> set[str]:
    """Images plus LLaVA-665k entries (one question per entry, `prompt(question)` as the human
    turn); returns the images' pixel hashes."""
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    entries, hashes = [], set()
    for i, scene in enumerate(progress(scenes, f"toyworld {split} images")):
        img = W.render(scene, image_size)
        rel = f"images/{split}_{i:05d}.png"
        img.save(split_dir / rel, format="PNG")
        hashes.add(W.pixel_hash(img))
        for q in questions(i, scene):
            entries.append({
                "id": stable_id("toyworld", split, rel, q.question, q.options),
                "image": rel,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{prompt(q)}"},
                    {"from": "gpt", "value": q.answer},
                ],
            })
    _write_json(split_dir / LLAVA_FILE, entries)
    # Kept beside the images for tests and analysis: what each image shows.
    _write_json(split_dir / "scenes.json", [s.to_dict() for s in scenes])
    return hashes


# ---- benchmarks --------------------------------------------------------------------------

def _bench_scenes(rng: np.random.Generator, prior: np.ndarray, n: int, image_size: int,
                  train_hashes: set[str]) -> tuple[list[W.Scene], dict[str, int]]:
    """n scenes whose renders differ from every train-side image (so a held-out score is never a
    memorised image) and from each other (so no benchmark asks one image twice as two items);
    draws that repeat one are skipped and counted. A draw depends only on the draws before it, so
    a larger n keeps the first n scenes."""
    scenes: list[W.Scene] = []
    seen: set[str] = set()
    rejected = {"bench_draws_rejected_as_train_duplicates": 0, "bench_draws_rejected_as_repeats": 0}
    while len(scenes) < n:
        scene = W.sample_scene(rng, prior)
        h = W.pixel_hash(W.render(scene, image_size))
        if h in train_hashes or h in seen:
            rejected["bench_draws_rejected_as_train_duplicates" if h in train_hashes
                     else "bench_draws_rejected_as_repeats"] += 1
            if sum(rejected.values()) > MAX_REJECTED_DRAWS:
                raise RuntimeError(f"toyworld: {rejected} benchmark draws repeated a train or benchmark image; "
                                   "the world is too small for this many images: lower num_heldout_images or "
                                   "num_train_images")
            continue
        seen.add(h)
        scenes.append(scene)
    return scenes, rejected


def _write_benchmarks(bench_dir: Path, pool: list[W.Scene], num_guard: int, image_size: int,
                      ss: np.random.SeedSequence, stats: W.WorldStats) -> dict[str, int]:
    """The three TSVs share the benchmark images, as POPE's three splits share COCO images: toy_pope
    (the target) asks about the whole pool, toy_mc and toy_short (guards) about its first
    `num_guard` images. Each draws from its own child of `ss`, so one's size never changes another."""
    images = [_b64_png(W.render(s, image_size)) for s in pool]
    rngs = dict(zip(BENCHMARKS, (np.random.default_rng(s) for s in ss.spawn(len(BENCHMARKS))), strict=True))
    per_bench: dict[str, list[tuple[int, W.Question]]] = {b: [] for b in BENCHMARKS}
    for i, scene in enumerate(pool):
        per_bench["toy_pope"] += [(i, q) for q in W.pope_pair(scene, W.POPE_STRATEGIES[i % 3], rngs["toy_pope"], stats)]
    for name, make, kinds in (("toy_mc", W.mc_question, W.MC_KINDS),
                              ("toy_short", W.short_question, tuple(W.SHORT_KINDS))):
        for i, scene in enumerate(pool[:num_guard]):
            asked: list[str] = []  # no kind twice per image
            for j in range(BENCH_QUESTIONS_PER_IMAGE):
                turn = BENCH_QUESTIONS_PER_IMAGE * i + j
                q = W.first_available(make, scene, W.rotate(kinds, turn), rngs[name], skip=asked)
                if q is not None:
                    asked.append(q.kind)
                    per_bench[name].append((i, q))
    bench_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in per_bench.items():
        _write_tsv(bench_dir / f"{name}.tsv", rows, images, with_options=name == "toy_mc")
        _write_json(bench_dir / f"{name}.scenes.json", [pool[i].to_dict() for i, _ in rows])
    return {name: len(rows) for name, rows in per_bench.items()}


def _write_tsv(path: Path, rows: list[tuple[int, W.Question]], images: list[str], *, with_options: bool) -> None:
    columns = TSV_COLUMNS + (list(W.LETTERS) if with_options else [])
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for index, (img_i, q) in enumerate(rows):
            # The bare question, as VLMEvalKit stores it; the evaluator adds the answer format.
            row = [index, images[img_i], q.question, q.answer, q.category]
            writer.writerow(row + (list(q.options) if with_options else []))


def _b64_png(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def held_out_images(world_dir: str | os.PathLike, benchmark: str = "toy_short") -> dict[str, W.Scene]:
    """A benchmark's images (base64, first use, in row order) and their scenes: the held-out images
    the later benchmarks ask about, never a train image. toy_short (the default) holds the guards'
    images (toy_mmvet asks about them); POOL_BENCHMARK holds the whole pool (toy_steps)."""
    bench = Path(world_dir) / "benchmarks"
    scenes = [W.Scene.from_dict(d) for d in _read_json(bench / f"{benchmark}.scenes.json")]
    by_image: dict[str, W.Scene] = {}
    for row, scene in zip(read_tsv(bench / f"{benchmark}.tsv"), scenes, strict=True):
        if len(row["image"]) > 64:  # a row holding its own image (not a reference to another row)
            by_image.setdefault(row["image"], scene)
    return by_image


def check_disjoint(world_dir: str | os.PathLike) -> None:
    """Re-read what was written: no image of any benchmark TSV (BENCHMARKS must be there; the
    multi-image ones, toy_steps and toy_mmvet are checked when present) may equal a seed or train
    image."""
    world_dir = Path(world_dir)
    train_side = {W.pixel_hash(Image.open(p)): p.name
                  for split in ("seeds", "train") for p in sorted((world_dir / split / "images").glob("*.png"))}
    bench_dir = world_dir / "benchmarks"
    present = sorted(p.stem for p in bench_dir.glob("*.tsv"))
    missing = [name for name in BENCHMARKS if name not in present]
    if missing:
        raise RuntimeError(f"toyworld: {bench_dir} lacks {missing}; rebuild the world with `visalign toyworld build`")
    hashes: dict[str, str] = {}  # base64 -> pixel hash: the pool's images recur across rows and files
    for name in present:
        for row in read_tsv(bench_dir / f"{name}.tsv"):
            for b64 in row_images(row["image"]):
                if b64 not in hashes:
                    hashes[b64] = W.pixel_hash(decode_image(b64))
                h = hashes[b64]
                if h not in train_side:
                    continue
                raise RuntimeError(f"toyworld: {name}.tsv row {row['index']} shows the same pixels as train-side "
                                   f"image {train_side[h]}; benchmark images must be held out")


# ---- files -------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def world_is_current(world_dir: str | os.PathLike) -> bool:
    """Whether `world_dir` holds a built world of this FORMAT_VERSION (a cache of an older one must
    be rebuilt: the same seed gives other files now)."""
    path = Path(world_dir) / WORLD_FILE
    return path.is_file() and _read_json(path).get("format_version") == FORMAT_VERSION


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_manifest(out: Path, seed: int, image_size: int, hashes: dict[str, set[str]], counts: dict[str, int],
                    stats: W.WorldStats) -> dict:
    paths = {
        "world": out / WORLD_FILE, "corpus": out / CORPUS_FILE,
        "seeds": out / "seeds" / LLAVA_FILE, "train": out / "train" / LLAVA_FILE,
        **{name: out / "benchmarks" / f"{name}.tsv" for name in BENCHMARKS},
    }
    manifest = {
        "format_version": FORMAT_VERSION, "seed": seed, "image_size": image_size, "counts": counts,
        "colours": list(W.COLOURS), "shapes": list(W.SHAPES), "cells": list(W.CELLS), "sizes": list(W.SIZES),
        # Content hashes of every data file: two builds with the same seed must match exactly.
        "sha256": {k: _sha256(p) for k, p in paths.items() if k != "world"},
        # One digest of the sorted pixel hashes of each split's images.
        "image_pixels_sha256": {k: hashlib.sha256("".join(sorted(v)).encode()).hexdigest()
                                for k, v in hashes.items()},
        "object_frequency": stats.to_dict()["frequency"],
    }
    _write_json(paths["world"], manifest)
    log.info("toyworld: built %s (%s)", out, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return {"paths": {k: str(p) for k, p in paths.items()}, "counts": counts}
