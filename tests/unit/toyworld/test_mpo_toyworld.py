"""MPO's toy data: step-by-step questions with ground truth, their seeds and benchmark, the
chain-of-thought SFT examples, and evaluate's COT task on the new benchmark."""

import json

import pytest

from visalign.report import StageReport
from visalign.stages import benchmarks, correctness, evaluate
from visalign.toyworld import steps
from visalign.toyworld import world as W


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from visalign.toyworld import build_world

    w = tmp_path_factory.mktemp("steps") / "world"
    build_world(w, seed=3, num_seed_images=12, num_train_images=10, num_bench_images=6, num_heldout_images=9)
    counts = steps.write_step_data(w, seed=3)
    return w, counts


def test_step_questions_are_right_about_the_scene():
    scene = W.Scene((W.Shape("red", "circle", "top left", "small"), W.Shape("red", "cross", "centre", "large"),
                     W.Shape("blue", "circle", "bottom", "small")))
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        c = steps.counting(scene, rng)
        colour = c.question.split()[2]
        assert c.answer == str(sum(s.colour == colour for s in scene.shapes))
        cmp = steps.comparing(scene, rng)
        loc = steps.locating(scene, rng)
        assert loc.answer in ("top left", "centre", "bottom") and loc.answer in loc.rationale
        for q in (c, cmp, loc):  # the worked answer parses and scores as correct
            got = correctness.extract(q.target())
            assert got.answer == q.answer and correctness.score(got.answer, q.answer, q.answer_type) == 1.0
    assert steps._plurals("cross") == "crosses" and steps._plurals("circle") == "circles"


def test_seeds_mix_ground_truth_and_open_questions_and_benchmark_is_held_out(world):
    w, counts = world
    rows = json.loads((w / "seeds" / steps.STEPS_SEEDS).read_text())
    answers = [t["value"] for r in rows for t in r["conversations"][1::2]]
    assert None in answers and any(a is not None for a in answers)  # both pair builders get seeds
    bench = evaluate.read_benchmark(str(w / "benchmarks" / "toy_steps.tsv"), StageReport("t"))
    assert bench.task == benchmarks.COT and counts["step_bench"] == len(bench.rows) > 0
    assert {r.category for r in bench.rows} <= set(steps.KINDS)
    from visalign.toyworld.export import check_disjoint, decode_image, read_tsv

    check_disjoint(w)
    from PIL import Image

    train_side = {W.pixel_hash(Image.open(p)) for split in ("seeds", "train")
                  for p in (w / split / "images").glob("*.png")}
    assert not any(W.pixel_hash(decode_image(r["image"])) in train_side
                   for r in read_tsv(w / "benchmarks" / "toy_steps.tsv"))
    assert steps.write_step_data(w, seed=3) == counts  # idempotent


def test_evaluate_cot_prompt_and_scoring(world):
    w, _ = world
    bench = evaluate.read_benchmark(str(w / "benchmarks" / "toy_steps.tsv"), StageReport("t"))
    row = bench.rows[0]
    from visalign.recipes.registry import COT_INSTRUCTION

    assert evaluate.build_question(row, benchmarks.COT) == f"{row.question}\n{COT_INSTRUCTION}"
    assert evaluate.SCORERS[benchmarks.COT](f"Looking.\nFinal answer: {row.answer}", row) == (row.answer, True)
    assert evaluate.SCORERS[benchmarks.COT](row.answer, row) == (None, False)  # no rationale: format failure


def test_unknown_answer_type_in_a_benchmark_is_dropped_with_its_row(world, tmp_path):
    w, _ = world
    lines = (w / "benchmarks" / "toy_steps.tsv").read_text().splitlines()
    head, first = lines[0], lines[1].rsplit("\t", 1)[0] + "\tcolour_code"
    (tmp_path / "bad.tsv").write_text("\n".join([head, first, *lines[2:4]]) + "\n")
    report = StageReport("evaluate")
    bench = evaluate.read_benchmark(str(tmp_path / "bad.tsv"), report)
    assert len(bench.rows) == 2 and report.dropped["missing_field"] == 1
    assert "answer_type" in report.examples["missing_field"][0] and "row 2" in report.examples["missing_field"][0]


def test_cot_sft_examples_cover_the_train_images(world, tiny_model):
    from transformers import AutoProcessor

    from visalign.toyworld import mpo_sft

    w, _ = world
    processor = AutoProcessor.from_pretrained(tiny_model)
    examples = mpo_sft.cot_examples(w / "train", processor)
    assert len(examples) >= 10 and {e.image for e in examples} == set(range(10))
    tok = processor.tokenizer
    text = tok.decode(examples[0].answer_ids, skip_special_tokens=True)
    assert "Final answer:" in text and examples[0].answer_ids[-1] == tok.eos_token_id


def test_mpo_tokenizer_keeps_chain_of_thought_examples_short(world, tmp_path):
    from transformers import AutoProcessor

    from visalign.toyworld import mpo_sft

    w, _ = world
    processor = AutoProcessor.from_pretrained(mpo_sft.build_mpo_untrained_model(w, tmp_path / "m"))
    examples = mpo_sft.cot_examples(w / "train", processor)
    # whole words are tokens: a worked answer is a few dozen tokens, not a hundred byte pieces
    assert max(len(e.answer_ids) for e in examples) <= 32
    assert max(len(e.prompt_ids) for e in examples) <= 64 + 40  # 64 image tokens at 64 px + question + instruction
