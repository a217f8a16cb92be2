"""MPO's answer extraction, scorers and the two pair builders (correctness, DropoutNTP)."""

import json

import pytest

from visalign import schema
from visalign.mpo import pairs as mpo_pairs
from visalign.recipes import MpoPairsParams, SampleParams
from visalign.schema import Prompt, Response
from visalign.stages import correctness, rollout, sample


@pytest.mark.parametrize("text, answer, problem", [
    ("There are two circles and one square.\nFinal answer: 3", "3", None),
    ("Final answer: 2 is wrong. Recount: three.\nfinal ANSWER: 3.", "3", None),  # the last one counts
    ("I think it is 3", None, correctness.NO_FINAL_ANSWER),
    ("Final answer: 3", None, correctness.NO_RATIONALE),
    ("Counting.\nFinal answer:   ", None, correctness.EMPTY_ANSWER),
    ("Counting.\nFinal answer: 3\nBecause I counted.", None, correctness.MULTI_LINE_ANSWER),
    ("", None, correctness.NO_FINAL_ANSWER),
])
def test_extract(text, answer, problem):
    got = correctness.extract(text)
    assert (got.answer, got.problem) == (answer, problem)


def test_scorers():
    s = correctness.score
    assert s("B", "(B) red circle", "multiple_choice") == 1.0
    assert s("(b) the red one", "B", "multiple_choice") == 1.0 and s("C", "B", "multiple_choice") == 0.0
    assert s("1000.4", "1000", "numeric") == 1.0  # within 1e-3 relative
    assert s("1002", "1000", "numeric") == 0.0 and s("1,000", "1000", "numeric") == 1.0
    assert s("three", "3", "numeric") == 1.0 and s("0", "0", "numeric") == 1.0
    assert s("The Red.", "red", "vqa") == 1.0 and s("blue", "red", "vqa") == 0.0
    refs = " | ".join(["red"] * 2 + ["dark red"] * 8)
    assert correctness.vqa_accuracy("red", correctness.references_of(refs), 0) == pytest.approx(2 / 3)
    assert s("RED", "red", "anls") == 1.0  # exact match, case-insensitive, comes first
    assert correctness.anls("invoice", ["invoce"], 0) == pytest.approx(1 - 1 / 7)  # a similarity, not a distance
    assert correctness.anls("abc", ["xyz"], 0) == 0.0  # NL >= 0.5 scores 0
    assert correctness.edit_distance("kitten", "sitting") == 3
    with pytest.raises(ValueError, match="answer_type='colour'"):
        s("red", "blue", "colour")
    # MathVista's type names
    assert s("2.0", "2", "integer") == 1.0 and s("3.1416", "3.14159", "float") == 1.0 and s("1.5", "2", "float") == 0.0
    assert s("The cat", "cat", "text") == 1.0 and correctness.scorer_for("list") is None


def _write(d, prompts, responses):
    d.mkdir(parents=True, exist_ok=True)
    (d / "images").mkdir(exist_ok=True)
    from assets import draw

    for p in prompts:
        for im in p.images:
            draw("red").save(d / im)
    schema.write_rows(d / schema.PROMPTS_FILE, prompts)
    schema.write_rows(d / schema.RESPONSES_FILE, responses)


def _prompt(i, reference="3", answer_type="numeric"):
    return Prompt(id=f"p{i}", images=[f"images/{i}.png"], question=f"How many shapes? ({i})", source="seeds.json",
                  source_row=str(i), reference=reference, answer_type=answer_type)


def _responses(pid, texts):
    return [Response(id=f"{pid}-{k}", prompt_id=pid, view=rollout.CLEAN, text=t, num_tokens=3, finish_reason="eos",
                     sample_index=k) for k, t in enumerate(texts)]


RIGHT = ["One circle, two squares.\nFinal answer: 3", "Three shapes in all.\nFinal answer: three"]
WRONG = ["One circle, one square.\nFinal answer: 2", "I see 4.\nFinal answer: 4"]


def test_correctness_pairs_profile_formats_and_bad_input(tmp_path):
    prompts = [_prompt(0), _prompt(1), _prompt(2), _prompt(3, answer_type="colour"), _prompt(4)]
    responses = (_responses("p0", RIGHT + WRONG + ["3", "no idea\nFinal answer:"])  # 2 right, 2 wrong, 2 format
                 + _responses("p1", RIGHT) + _responses("p2", WRONG) + _responses("p3", RIGHT + WRONG))
    _write(tmp_path / "in", prompts, responses)  # p4 has no samples
    report = mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                           output_dir=str(tmp_path / "out"), params=MpoPairsParams(), prompt_template="cot")
    pairs = schema.read_rows(tmp_path / "out" / schema.PAIRS_FILE)
    assert len(pairs) == 8 and {p.prompt_id for p in pairs} == {"p0"}  # 2 correct x 4 incorrect
    assert all("Final answer:" in p.chosen and p.chosen != p.rejected for p in pairs)
    assert pairs[0].prompt == rollout.render_question("How many shapes? (0)", "cot")
    assert (tmp_path / "out" / "images" / "0.png").exists()
    assert report.extra["difficulty"] == {"all_right": 1, "all_wrong": 1, "mixed": 1}
    assert report.extra["format_negatives"] == 2 and report.extra["judged_responses"] == 10
    assert report.extra["format_negatives_by_reason"] == {"no_final_answer": 1, "empty_answer": 1}
    assert report.extra["pairs_per_question"] == pytest.approx(8 / 3, abs=1e-3)
    assert report.dropped["unknown_answer_type"] == 1 and report.dropped["no_responses"] == 1
    written = json.loads((tmp_path / "out" / schema.REPORT_FILE).read_text())
    assert "p3" in written["drop_examples"]["unknown_answer_type"][0]


def test_cap_substring_and_duplicates(tmp_path):
    right = [f"Step {k}.\nFinal answer: 3" for k in range(5)]
    wrong = [f"Step {k}.\nFinal answer: 4" for k in range(5)]
    sub = ["Step 0.\nFinal answer: 3\nNo, recount.\nFinal answer: 4"]  # wrong, contains right[0]: skipped
    _write(tmp_path / "in", [_prompt(0)], _responses("p0", right + wrong + sub + [wrong[0]]))
    params = MpoPairsParams(max_pairs_per_question=15, seed=1)
    report = mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                           output_dir=str(tmp_path / "a"), params=params)
    a = schema.read_rows(tmp_path / "a" / schema.PAIRS_FILE)
    # 5 right x 7 wrong = 35; 1 substring; 5 duplicates (wrong[0] twice) -> 29 candidates, capped to 15
    assert report.dropped["chosen_in_rejected"] == 1 and report.dropped["duplicate_pair"] == 5
    assert len(a) == 15 and len({(p.chosen, p.rejected) for p in a}) == 15
    assert report.extra["capped_pairs"] == 14
    mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                  output_dir=str(tmp_path / "b"), params=params)
    assert [p.id for p in schema.read_rows(tmp_path / "b" / schema.PAIRS_FILE)] == [p.id for p in a]  # seeded


def test_truncate_words():
    assert mpo_pairs.truncate_words("a b c d", 0.5) == "a b"
    assert mpo_pairs.truncate_words("a  b,\tc d", 0.5) == "a  b,"  # cut where the word ends, whitespace as written
    assert mpo_pairs.truncate_words("a b c", 0.5) == "a"
    assert mpo_pairs.truncate_words("a b", 0.99) == "a"  # never the whole answer
    assert mpo_pairs.truncate_words("word", 0.5) is None


def test_dropout_ntp_continues_without_the_image(tiny_model, tmp_path):
    """Seeds with no reference go to DropoutNTP; the real tiny model continues the prefix text-only."""
    prompts = [_prompt(i, reference=None, answer_type=None) for i in range(3)]
    texts = ["red circle at the top left of the image", "one", "blue square and a green cross"]
    _write(tmp_path / "in", prompts, [r for p, t in zip(prompts, texts, strict=True)
                                      for r in _responses(p.id, [t])])
    params = MpoPairsParams(dropout_max_new_tokens=6, batch_size=4, seed=3)
    report = mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                           output_dir=str(tmp_path / "out"), params=params, model=str(tiny_model))
    pairs = schema.read_rows(tmp_path / "out" / schema.PAIRS_FILE)
    assert report.dropped["too_short_to_truncate"] == 1  # "one"
    assert report.extra["dropout_ntp_questions"] == 3 and report.extra["dropout_ntp_pairs"] == len(pairs)
    for p in pairs:
        assert p.provenance["builder"] == "dropout_ntp"
        half = " ".join(p.chosen.split()[:p.provenance["prefix_words"]])
        assert p.rejected.startswith(half) and p.rejected != p.chosen
    assert {p.chosen for p in pairs} <= set(texts)
    with pytest.raises(ValueError, match="DropoutNTP needs a model"):
        mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                      output_dir=str(tmp_path / "x"), params=params)


class Continuations:
    """A fake engine: the continuation of each prefix from a table; records the requests."""

    def __init__(self, table):
        self.table, self.requests = table, []

    def generate(self, requests):
        self.requests += requests
        return [rollout.GenerationResult(id=r.id, text=self.table[r.assistant_prefix], num_tokens=2,
                                         finish_reason="eos") for r in requests]


def test_dropout_ntp_joins_prefix_and_continuation_verbatim_for_every_distinct_answer(tmp_path):
    """rejected = prefix + continuation as generated: a continuation that ends the prefix's last word
    is not split by a space. Each distinct answer of a prompt without reference gets its own pair."""
    prompts = [_prompt(0, reference=None, answer_type=None)]
    answers = ["A  big\tball is red", "The ball is round and red", "The ball is round and red"]
    _write(tmp_path / "in", prompts, _responses("p0", answers))
    engine = Continuations({"A  big": "gish thing is blue\n", "The ball is": " square"})
    report = mpo_pairs.run(prompts_dir=str(tmp_path / "in"), responses_dir=str(tmp_path / "in"),
                           output_dir=str(tmp_path / "out"), params=MpoPairsParams(), engine=engine)
    pairs = {p.chosen: p.rejected for p in schema.read_rows(tmp_path / "out" / schema.PAIRS_FILE)}
    assert pairs == {"A  big\tball is red": "A  biggish thing is blue", "The ball is round and red": "The ball is square"}
    assert report.dropped["duplicate_answer"] == 1 and report.extra["dropout_ntp_questions"] == 1
    assert all(r.images == [] for r in engine.requests)  # continued without the image
    assert len({r.seed_key for r in engine.requests}) == 2  # each answer its own sampling stream


def test_unknown_given_answer_type_goes_through_sample_and_is_dropped_by_pairs(tmp_path):
    """An answer type the seed states but no scorer knows: sample keeps it, mpo_pairs drops the
    prompt as unknown_answer_type naming the file, row and field."""
    import base64
    import io

    from assets import draw

    buf = io.BytesIO()
    draw("red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    tsv = tmp_path / "seeds.tsv"
    tsv.write_text("index\timage\tquestion\tanswer\tanswer_type\n"
                   f"7\t{b64}\tHow many?\t3\tcolour_code\n8\t{b64}\tHow many more?\t4\t\n")
    sample.run(sources=[str(tsv)], output_dir=str(tmp_path / "p"), params=SampleParams())
    prompts = schema.read_rows(tmp_path / "p" / schema.PROMPTS_FILE)
    assert sorted(p.answer_type for p in prompts) == ["colour_code", "numeric"]
    schema.write_rows(tmp_path / "p" / schema.RESPONSES_FILE,
                      [r for p in prompts for r in _responses(p.id, RIGHT + WRONG)])
    report = mpo_pairs.run(prompts_dir=str(tmp_path / "p"), responses_dir=str(tmp_path / "p"),
                           output_dir=str(tmp_path / "out"), params=MpoPairsParams())
    assert report.dropped["unknown_answer_type"] == 1 and report.extra["correctness_questions"] == 1
    example = report.examples["unknown_answer_type"][0]
    assert f"{tsv} row 7" in example and "field 'answer_type'='colour_code'" in example
