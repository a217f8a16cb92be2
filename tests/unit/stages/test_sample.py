import base64
import io
import json

import pytest
from assets import draw

from visalign import schema
from visalign.errors import EmptyResult
from visalign.recipes import SampleParams
from visalign.report import read_report
from visalign.stages import sample


def test_picks_seeded_capped_and_stripped(llava_seeds, tmp_path):
    out = tmp_path / "out"
    report = sample.run(sources=[str(llava_seeds)], output_dir=str(out), params=SampleParams(num_prompts=10, seed=1))
    prompts = schema.read_rows(out / schema.PROMPTS_FILE)
    assert len(prompts) == 10 == report.rows_out
    per_image = {}
    for p in prompts:
        per_image[p.images[0]] = per_image.get(p.images[0], 0) + 1
        assert "single word" not in p.question and "<image>" not in p.question
        assert (out / p.images[0]).exists()
        assert p.meta["image_group"] == "images"  # the seed image's folder (MIA-DPO's distractor pool)
    assert max(per_image.values()) <= 2
    # Same seed -> same prompts; another seed -> another pick.
    again = sample.run(sources=[str(llava_seeds)], output_dir=str(tmp_path / "again"), params=SampleParams(num_prompts=10, seed=1))
    assert [p.id for p in schema.read_rows(tmp_path / "again" / schema.PROMPTS_FILE)] == [p.id for p in prompts]
    assert again.rows_out == 10


def test_bad_rows_are_counted_with_file_row_field(llava_seeds, tmp_path):
    report = sample.run(sources=[str(llava_seeds)], output_dir=str(tmp_path / "o"), params=SampleParams(num_prompts=100))
    d = report.to_dict()
    assert d["dropped"] == {"unreadable_image": 1, "missing_field": 1, "no_image": 1}
    assert "field 'conversations'" in d["drop_examples"]["missing_field"][0]
    assert str(llava_seeds) in d["drop_examples"]["unreadable_image"][0]
    assert d["rows_out"] == 16  # 8 images x at most 2 questions
    assert json.loads((tmp_path / "o" / "report.json").read_text())["rows_out"] == 16


def test_reads_vlmevalkit_tsv_with_options(tmp_path):
    buf = io.BytesIO()
    draw("red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    lines = ["index\timage\tquestion\tanswer\tA\tB\tcategory",
             f"1\t{b64}\tWhat colour?\tA\tred\tblue\tcolour",
             "2\tnot-base64!!\tWhat colour?\tB\tred\tblue\tcolour",
             f"3\t{b64}\t\tA\tred\tblue\tcolour"]
    (tmp_path / "b.tsv").write_text("\n".join(lines) + "\n")
    report = sample.run(sources=[str(tmp_path / "b.tsv")], output_dir=str(tmp_path / "o"), params=SampleParams())
    prompts = schema.read_rows(tmp_path / "o" / schema.PROMPTS_FILE)
    assert len(prompts) == 1 and prompts[0].question == "What colour?\nA. red\nB. blue"
    assert prompts[0].answer_type == "multiple_choice" and prompts[0].reference == "A"
    assert report.dropped == {"unreadable_image": 1, "missing_field": 1}


def test_empty_input_and_unknown_format(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(EmptyResult, match="sample: no rows out of 0 in"):
        sample.run(sources=[str(tmp_path / "empty.json")], output_dir=str(tmp_path / "o"), params=SampleParams())
    assert read_report(tmp_path / "o")["rows_out"] == 0  # the report is written before the stage fails
    with pytest.raises(ValueError, match="unknown seed format"):
        sample.run(sources=[str(tmp_path / "x.csv")], output_dir=str(tmp_path / "o2"), params=SampleParams())
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        sample.run(sources=[str(tmp_path / "bad.json")], output_dir=str(tmp_path / "o3"), params=SampleParams())


def _tsv(path, rows, header="index\timage\tquestion\tanswer\tA\tB\tanswer_type"):
    buf = io.BytesIO()
    draw("red").save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    path.write_text("\n".join([header] + [f"{i}\t{b64}\t" + "\t".join(r) for i, r in enumerate(rows, 1)]) + "\n")
    return path


def test_answer_types_are_read_when_given_else_inferred_numeric_included(tmp_path):
    tsv = _tsv(tmp_path / "t.tsv", [("Which?", "A", "red", "blue", ""), ("How many?", "1,200", "", "", ""),
                                    ("Text?", "invoice", "", "", "anls"), ("Red?", "yes", "", "", "nan"),
                                    ("Delta?", "-2.5", "", "", ""), ("Code?", "X1", "", "", "colour_code")])
    sample.run(sources=[str(tsv)], output_dir=str(tmp_path / "o"), params=SampleParams())
    got = {p.question.split("\n")[0]: p.answer_type for p in schema.read_rows(tmp_path / "o" / schema.PROMPTS_FILE)}
    assert got == {"Which?": "multiple_choice", "How many?": "numeric", "Text?": "anls", "Red?": "yes_no",
                   "Delta?": "numeric", "Code?": "colour_code"}  # an unknown given type passes through


def test_llava_answer_type_per_turn_then_row_then_inferred(tmp_path):
    draw("red").save(tmp_path / "0.png")
    turns = [{"from": "human", "value": "<image>\nQ1"}, {"from": "gpt", "value": "3 apples", "answer_type": "anls"},
             {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "3"}]
    rows = [{"id": "a", "image": "0.png", "answer_type": "vqa", "conversations": turns},
            {"id": "b", "image": "0.png", "conversations": turns[2:] + [{"from": "human", "value": "Q3"},
                                                                        {"from": "gpt", "value": "red"}]}]
    (tmp_path / "s.json").write_text(json.dumps(rows))
    sample.run(sources=[str(tmp_path / "s.json")], output_dir=str(tmp_path / "o"),
               params=SampleParams(max_questions_per_image=10))
    got = {p.source_row: p.answer_type for p in schema.read_rows(tmp_path / "o" / schema.PROMPTS_FILE)}
    assert got == {"a#0": "anls", "a#1": "vqa", "b#0": "numeric", "b#1": "short"}


@pytest.mark.parametrize("reference, expected", [
    ("3", "numeric"), ("-2.5", "numeric"), ("1,200", "numeric"), (" 42 ", "numeric"), ("1,20", "short"),
    ("3 apples", "short"), ("1e3", "short"), ("-", "short"), ("No", "yes_no"), (None, None)])
def test_inferred_answer_type(reference, expected):
    assert sample._answer_type(reference, False) == expected
