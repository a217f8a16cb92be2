"""toyworld: determinism, ground truth, POPE negatives, file formats, held-out images, tiny model."""

from __future__ import annotations

import base64
import csv
import filecmp
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visalign.recipes import SHORT_ANSWER_SUFFIX
from visalign.toyworld import export, sft
from visalign.toyworld import world as W

SMALL = {"num_seed_images": 12, "num_train_images": 40, "num_bench_images": 12, "num_heldout_images": 20,
         "num_multi_seq_rows": 30}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    export.build_world(out, seed=0, **SMALL)
    return out


@pytest.fixture(scope="module")
def untrained(world_dir, tmp_path_factory) -> Path:
    return sft.build_untrained_model(world_dir, tmp_path_factory.mktemp("untrained"))


def scenes(n: int, seed: int = 0) -> list[W.Scene]:
    rng = np.random.default_rng(seed)
    prior = W.object_prior(rng)
    return [W.sample_scene(rng, prior) for _ in range(n)]


def expected_answer(scene: W.Scene, question: str, options: list[str] | None = None) -> str:
    """The answer recomputed from the scene alone, independent of how the world drew it."""
    if m := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question):
        return "yes" if (m[1], m[2]) in scene.objects else "no"
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        (shape,) = [s for s in scene.shapes if s.shape == m[1]]  # asked only when unique
        truth = shape.colour
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (shape,) = [s for s in scene.shapes if s.colour == m[1]]
        truth = shape.shape
    elif question == "How many shapes are there?":
        truth = str(len(scene.shapes))
    elif question == "Which of these objects is in the image?":
        present = [o for o in options if tuple(o.split()) in scene.objects]
        assert len(present) == 1, (options, scene)
        truth = present[0]
    else:
        raise AssertionError(f"unknown question {question!r}")
    if options is None:
        return truth
    assert options.count(truth) == 1 and len(set(options)) == 4, (options, truth)
    return W.LETTERS[options.index(truth)]


def parse_llava_prompt(value: str) -> tuple[str, list[str] | None]:
    """(question, options); a yes/no or short question may come bare (the train split's mix)."""
    assert value.startswith("<image>\n")
    lines = value.removeprefix("<image>\n").split("\n")
    if len(lines) == 1:
        return lines[0], None
    if lines[-1] == SHORT_ANSWER_SUFFIX:
        return "\n".join(lines[:-1]), None
    assert lines[-1] == W.MC_SUFFIX and len(lines) == 6, lines
    return lines[0], [line[3:] for line in lines[1:5]]


# ---- world ---------------------------------------------------------------------------------

def test_same_seed_same_bytes_other_seed_differs(world_dir, tmp_path):
    export.build_world(tmp_path / "again", seed=0, **SMALL)
    export.build_world(tmp_path / "other", seed=1, **SMALL)
    files = sorted(p.relative_to(world_dir) for p in world_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(world_dir, tmp_path / "again", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    for name in ("train/llava.json", "benchmarks/toy_pope.tsv", "train/images/train_00000.png"):
        assert (world_dir / name).read_bytes() != (tmp_path / "other" / name).read_bytes(), name
    assert W.render(scenes(1, 5)[0]).tobytes() == W.render(scenes(1, 5)[0]).tobytes()


def test_render_size_and_no_overlap():
    for scene in scenes(50):
        assert len({s.cell for s in scene.shapes}) == len(scene.shapes) and 1 <= len(scene.shapes) <= 4
        img = np.asarray(W.render(scene, 96))
        assert img.shape == (96, 96, 3)
        # Every coloured pixel lies in the cell of a shape of that colour: nothing spills over.
        for s in scene.shapes:
            row, col = divmod(W.CELLS.index(s.cell), 3)
            inside = np.all(img[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] == W.COLOURS[s.colour], axis=-1)
            assert inside.sum() > 20
        coloured = np.any(img != 255, axis=-1)
        expected = np.zeros_like(coloured)
        for s in scene.shapes:
            row, col = divmod(W.CELLS.index(s.cell), 3)
            expected[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32] = True
        assert not (coloured & ~expected).any()


def test_every_generated_answer_matches_its_scene():
    rng = np.random.default_rng(3)
    sc = scenes(300)
    stats = W.WorldStats.from_scenes(sc)
    for i, scene in enumerate(sc):
        qs = W.pope_pair(scene, W.POPE_STRATEGIES[i % 3], rng, stats)
        qs += [q for k in W.SHORT_KINDS if (q := W.short_question(scene, k, rng))]
        qs += [q for k in W.MC_KINDS if (q := W.mc_question(scene, k, rng))]
        for q in qs:
            opts = list(q.options) if q.options else None
            assert q.answer == expected_answer(scene, q.question, opts), (q, scene)


def test_pope_negatives_follow_their_strategy():
    sc = scenes(400)
    stats = W.WorldStats.from_scenes(sc)
    rng = np.random.default_rng(0)
    freq = {s: [] for s in W.POPE_STRATEGIES}
    shares = {s: [] for s in W.POPE_STRATEGIES}
    for scene in sc[:200]:
        absent = [o for o in W.OBJECTS if o not in scene.objects]
        for strategy in W.POPE_STRATEGIES:
            neg = W.pope_negative(scene, strategy, rng, stats)
            assert neg not in scene.objects
            freq[strategy].append(stats.frequency[neg])
            shares[strategy].append(any(neg[0] == p[0] or neg[1] == p[1] for p in scene.objects))
        top3_popular = stats.popular_ranking(absent)[:3]
        assert W.pope_negative(scene, "popular", rng, stats) in top3_popular
        # adversarial: shares an attribute, and no excluded candidate co-occurs more than the 3rd
        ranking = stats.adversarial_ranking(scene)
        co = [sum(stats.cooccurrence.get((p, o), 0) for p in scene.objects) for o in ranking]
        assert co == sorted(co, reverse=True)
        assert W.pope_negative(scene, "adversarial", rng, stats) in ranking[:3]
    assert all(shares["adversarial"]) and not all(shares["random"])
    assert np.mean(freq["popular"]) > np.mean(freq["random"])
    with pytest.raises(ValueError, match="unknown POPE strategy"):
        W.pope_negative(sc[0], "nearest", rng, stats)


def test_mc_letters_are_spread():
    rng = np.random.default_rng(1)
    letters = Counter(q.answer for scene in scenes(200) if (q := W.mc_question(scene, "count", rng)))
    assert set(letters) == set(W.LETTERS) and min(letters.values()) > 25


# ---- files ---------------------------------------------------------------------------------

def test_benchmark_tsvs_are_vlmevalkit_and_correct(world_dir):
    import pandas as pd

    manifest = json.loads((world_dir / "world.json").read_text())
    for name in export.BENCHMARKS:
        path = world_dir / "benchmarks" / f"{name}.tsv"
        df = pd.read_csv(path, sep="\t")
        assert list(df.columns[:5]) == ["index", "image", "question", "answer", "category"]
        assert len(df) == manifest["counts"][f"{name}_rows"]
        if name == "toy_pope":  # the target: a yes and a no about every image of the held-out pool
            assert len(df) == 2 * SMALL["num_heldout_images"] == 2 * df.image.nunique()
        else:  # the guards: about 2 rows on each of the pool's first num_bench_images images
            assert 1.5 * SMALL["num_bench_images"] <= len(df) <= 2 * SMALL["num_bench_images"]
        assert not df.duplicated(["image", "question"]).any() or name == "toy_pope"
        assert not df.duplicated(["image", "question", "answer"]).any()
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        bench_scenes = [W.Scene.from_dict(d) for d in json.loads(path.with_suffix(".scenes.json").read_text())]
        for row, scene in zip(rows, bench_scenes, strict=True):
            img = Image.open(io.BytesIO(base64.b64decode(row["image"])))
            assert img.size == (64, 64) and img.format == "PNG"
            assert img.convert("RGB").tobytes() == W.render(scene).tobytes()
            options = [row[c] for c in W.LETTERS] if name == "toy_mc" else None
            assert row["answer"] == expected_answer(scene, row["question"], options)
    pope = pd.read_csv(world_dir / "benchmarks" / "toy_pope.tsv", sep="\t")
    assert set(pope.category) == set(W.POPE_STRATEGIES)
    for _, group in pope.groupby("category"):
        assert (group.answer == "yes").sum() == (group.answer == "no").sum()
    short = pd.read_csv(world_dir / "benchmarks" / "toy_short.tsv", sep="\t", dtype=str)
    assert set(short.category) == {"colour", "shape", "count"}
    assert set(pd.read_csv(world_dir / "benchmarks" / "toy_mc.tsv", sep="\t").answer) <= set(W.LETTERS)


def test_llava_json_shape_and_answers(world_dir):
    for split, per_image in (("seeds", 3), ("train", None)):
        entries = json.loads((world_dir / split / "llava.json").read_text())
        split_scenes = [W.Scene.from_dict(d) for d in json.loads((world_dir / split / "scenes.json").read_text())]
        assert len({e["id"] for e in entries}) == len(entries)
        per = Counter(e["image"] for e in entries)
        assert len(per) == len(split_scenes) and max(per.values()) > 1
        if per_image:
            assert set(per.values()) == {per_image}
        for e in entries:
            assert set(e) == {"id", "image", "conversations"}
            assert [t["from"] for t in e["conversations"]] == ["human", "gpt"]
            assert (world_dir / split / e["image"]).is_file()
            question, options = parse_llava_prompt(e["conversations"][0]["value"])
            if split == "seeds":  # SeVa's sample stage strips the suffix itself: seeds keep it
                assert "\n" in e["conversations"][0]["value"].removeprefix("<image>\n")
            scene = split_scenes[int(re.search(r"_(\d+)\.png$", e["image"])[1])]
            assert e["conversations"][1]["value"] == expected_answer(scene, question, options)


def test_benchmark_images_are_held_out(world_dir, tmp_path):
    export.check_disjoint(world_dir)
    manifest = json.loads((world_dir / "world.json").read_text())
    assert len(set(manifest["image_pixels_sha256"].values())) == 3
    # Plant a train image in a copy of the benchmark: the check must fail loudly.
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(world_dir, copy)
    tsv = copy / "benchmarks" / "toy_short.tsv"
    rows = tsv.read_text().split("\n")
    train_png = (copy / "train" / "images" / "train_00003.png").read_bytes()
    first = rows[1].split("\t")
    first[1] = base64.b64encode(train_png).decode()
    rows[1] = "\t".join(first)
    tsv.write_text("\n".join(rows))
    with pytest.raises(RuntimeError, match="train_00003.png"):
        export.check_disjoint(copy)


def test_build_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="num_train_images=0"):
        export.build_world(tmp_path, num_train_images=0)
    every_problem = r"num_multi_seq_rows=0: must be >= 1; num_bench_images=9: must be <= num_heldout_images=8"
    with pytest.raises(ValueError, match=every_problem):
        export.build_world(tmp_path, num_bench_images=9, num_heldout_images=8, num_multi_seq_rows=0)


def test_cli_build_and_untrained_model(tmp_path, capsys):
    from visalign.cli import main

    world = tmp_path / "world"
    assert main(["toyworld", "build", "--out", str(world), "--num-seed-images", "2",
                 "--num-train-images", "3", "--num-bench-images", "2", "--num-heldout-images", "2",
                 "--seed", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["toy_pope_rows"] == 4
    assert json.loads((world / "world.json").read_text())["seed"] == 4
    assert main(["toyworld", "model", "--world", str(world), "--out", str(tmp_path / "m"), "--untrained"]) == 0
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "processor_config.json").is_file()


# ---- tiny model ----------------------------------------------------------------------------

def test_chat_template_round_trip_and_single_token_answers(untrained):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(untrained)
    tok = processor.tokenizer
    question = W.mc_prompt("What colour is the circle?", ["red", "blue", "green", "yellow"])
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    assert prompt == f"USER: <image>\n{question} ASSISTANT:"
    for answer in ["yes", "no", *W.COLOURS, *W.SHAPES, "1", "2", "3", "4", *W.LETTERS]:
        full = processor.apply_chat_template(
            [user, {"role": "assistant", "content": [{"type": "text", "text": answer}]}], tokenize=False)
        assert full == f"{prompt} {answer}</s>"
        answer_ids = tok(" " + answer, add_special_tokens=False)["input_ids"]
        assert len(answer_ids) == 1, (answer, tok.tokenize(" " + answer))
        joined = tok(prompt, add_special_tokens=False)["input_ids"] + answer_ids + [tok.eos_token_id]
        assert tok(full, add_special_tokens=False)["input_ids"] == joined


def test_sft_lowers_loss_and_saves_a_loadable_model(world_dir, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = sft.train_base_model(world_dir, tmp_path / "m", steps=30, batch_size=8, lr=3e-3, log_every=5)
    curve = json.loads((out / sft.SFT_RECORD_FILE).read_text())["loss_curve"]
    assert curve[-1]["loss"] < 0.7 * curve[0]["loss"], curve
    assert json.loads((out / "visalign_model.json").read_text())["kind"] == "full"
    again = sft.train_base_model(world_dir, tmp_path / "again", steps=30, batch_size=8, lr=3e-3, log_every=5)
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()  # fixed seed
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    row = export.read_tsv(world_dir / "benchmarks" / "toy_pope.tsv")[0]
    user = {"role": "user", "content": [{"type": "image"},
                                        {"type": "text", "text": f"{row['question']}\n{SHORT_ANSWER_SUFFIX}"}]}
    text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[export.decode_image(row["image"])], return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    # A few steps teach the format, not the answers: any new token (even </s>) shows it generates.
    assert ids.shape[1] > inputs["input_ids"].shape[1]
    assert processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:])[0]


def test_judged_benchmark_is_mmvet_shaped_held_out_and_graded_by_the_stand_in(world_dir, tmp_path):
    """toy_mmvet.tsv: MM-Vet's columns and capability categories, toy_short's held-out images, the
    same file for the same seed; the stand-in judge gives the truth 1.0 and a wrong answer 0.0."""
    import shutil

    from visalign.report import StageReport
    from visalign.stages import benchmarks, judge
    from visalign.toyworld.judged import ToyJudge, write_judged_data

    world, copy = tmp_path / "w", tmp_path / "w2"  # copies: the module's world stays as built
    shutil.copytree(world_dir, world)
    shutil.copytree(world_dir, copy)
    n = write_judged_data(world, seed=0)
    assert n == write_judged_data(world, seed=0) > 0  # kept when present
    assert write_judged_data(copy, seed=0) == n
    assert filecmp.cmp(world / "benchmarks" / "toy_mmvet.tsv", copy / "benchmarks" / "toy_mmvet.tsv", shallow=False)
    bench = benchmarks.read_benchmark(str(world / "benchmarks" / "toy_mmvet.tsv"), StageReport("e"))
    assert bench.task == benchmarks.MMVET and len(bench.rows) == n
    assert {r.category for r in bench.rows} <= {"rec", "rec,spat", "rec,math"}
    short_images = {row["image"] for row in export.read_tsv(world / "benchmarks" / "toy_short.tsv")}
    assert {row["image"] for row in export.read_tsv(world / "benchmarks" / "toy_mmvet.tsv")} <= short_images
    for row in bench.rows:
        truth = row.answer.replace("<AND>", " and ")
        assert ToyJudge().answer(judge.mmvet_prompt(row.question, row.answer, truth)) == "1.0"
        assert ToyJudge().answer(judge.mmvet_prompt(row.question, row.answer, "purple")) == "0.0"
