"""The bad-input corpus: every kind of bad input a hostile new user hands a stage, and its outcome.

Each case puts one bad input beside good ones and asserts one of two outcomes: a counted drop with
its reason and a detail naming the file, row and field (and every good row still came through), or
a clean error (an expected error type, exit 2 from the CLI) whose message names the file and what
to do. The README's "Bad input" section lists the kinds.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from assets import draw

from visalign import schema
from visalign.errors import EmptyResult, InputError, StageError
from visalign.recipes import AugmentParams, FilterParams, SampleParams
from visalign.report import StageReport, read_report
from visalign.stages import augment, benchmarks, sample, train
from visalign.stages import filter as filter_stage

GOOD = 2  # good rows beside every bad one


def png_bytes(colour: str = "red") -> bytes:
    buf = io.BytesIO()
    draw(colour).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming width x height, with a tiny body: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def truncated_png() -> bytes:
    return png_bytes()[:60]


# ---- sample: LLaVA JSON seeds -----------------------------------------------------------------

def llava_dir(tmp_path: Path, bad_row: dict | None, files: dict[str, bytes] | None = None) -> Path:
    (tmp_path / "seeds" / "images").mkdir(parents=True)
    rows = []
    for i in range(GOOD):
        (tmp_path / "seeds" / "images" / f"good{i}.png").write_bytes(png_bytes(["red", "blue"][i]))
        rows.append({"id": f"good{i}", "image": f"images/good{i}.png",
                     "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                       {"from": "gpt", "value": ["red", "blue"][i]}]})
    for name, data in (files or {}).items():
        (tmp_path / "seeds" / "images" / name).write_bytes(data)
    if bad_row is not None:
        rows.append(bad_row)
    (tmp_path / "seeds" / "seeds.json").write_text(json.dumps(rows))
    return tmp_path / "seeds" / "seeds.json"


def turn(question: str = "What colour?", answer: str | None = "red") -> list[dict]:
    turns = [{"from": "human", "value": f"<image>\n{question}"}]
    return turns + ([{"from": "gpt", "value": answer}] if answer is not None else [])


def run_sample(seeds: Path, tmp_path: Path, **params) -> StageReport:
    return sample.run(sources=[str(seeds)], output_dir=str(tmp_path / "out"), params=SampleParams(**params))


SAMPLE_DROPS = {
    "truncated image": ({"id": "b", "image": "images/bad.png", "conversations": turn()}, {"bad.png": truncated_png()},
                        "unreadable_image"),
    "image file missing": ({"id": "b", "image": "images/nowhere.png", "conversations": turn()}, {}, "unreadable_image"),
    "not an image (text file)": ({"id": "b", "image": "images/bad.png", "conversations": turn()},
                                 {"bad.png": b"hello, I am text"}, "unreadable_image"),
    "decompression bomb (20000x20000 header)": ({"id": "b", "image": "images/bomb.png", "conversations": turn()},
                                                {"bomb.png": bomb_png()}, "image_too_large"),
    "image path with ../": ({"id": "b", "image": "../../secret.png", "conversations": turn()}, {},
                            "image_outside_root"),
    "absolute image path": ({"id": "b", "image": "/etc/passwd", "conversations": turn()}, {}, "image_outside_root"),
    "image path is another URI": ({"id": "b", "image": "s3://elsewhere/x.png", "conversations": turn()}, {},
                                  "image_outside_root"),
    "image field missing (text-only row)": ({"id": "b", "conversations": turn()}, {}, "no_image"),
    "image field not a string": ({"id": "b", "image": 7, "conversations": turn()}, {}, "no_image"),
    "image field blank": ({"id": "b", "image": "  ", "conversations": turn()}, {}, "no_image"),
    "conversations missing": ({"id": "b", "image": "images/good0.png"}, {}, "missing_field"),
    "conversations not a list": ({"id": "b", "image": "images/good0.png", "conversations": "hi"}, {}, "missing_field"),
    "row not an object": ("just a string", {}, "missing_field"),
    "human turn without value": ({"id": "b", "image": "images/good0.png",
                                  "conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, {},
                                 "missing_field"),
    "question without an answer turn": ({"id": "b", "image": "images/good0.png",
                                         "conversations": turn("How many?") + turn("Is it round?", None)}, {},
                                        "unanswered_turn"),
    "the same question on the same image twice": ({"id": "good0", "image": "images/good0.png",
                                                    "conversations": turn("What colour?", "red")}, {},
                                                   "duplicate_prompt"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLE_DROPS))
def test_sample_drops_a_bad_llava_row_and_keeps_the_good_ones(kind, tmp_path):
    row, files, reason = SAMPLE_DROPS[kind]
    report = run_sample(llava_dir(tmp_path, row, files), tmp_path)
    assert report.dropped[reason] == 1, dict(report.dropped)
    assert sum(report.dropped.values()) == 1, dict(report.dropped)
    assert "seeds.json row" in report.examples[reason][0]  # the file and the row
    prompts = schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE)
    sources = {p.source_row.split("#")[0] for p in prompts}
    assert {"good0", "good1"} <= sources
    copied = list((tmp_path / "out" / "images").iterdir())
    assert len(copied) == len({p.images[0] for p in prompts})  # nothing else copied


def test_sample_keeps_the_answered_turns_of_a_row_whose_last_question_has_no_answer(tmp_path):
    row = {"id": "b", "image": "images/good0.png", "conversations": turn("How many?", "1") + turn("Round?", None)}
    report = run_sample(llava_dir(tmp_path, row), tmp_path)
    questions = [p.question for p in schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE)]
    assert "How many?" in questions and "Round?" not in questions
    assert "conversations[2]" in report.examples["unanswered_turn"][0]


def test_two_rows_with_one_id_and_question_on_different_images_are_two_prompts(tmp_path):
    row = {"id": "good0", "image": "images/good1.png", "conversations": turn("What colour?", "blue")}
    report = run_sample(llava_dir(tmp_path, row), tmp_path)
    prompts = schema.read_rows(tmp_path / "out" / schema.PROMPTS_FILE)
    assert report.rows_out == 3 and len({p.id for p in prompts}) == 3 and not report.dropped


def test_images_outside_the_root_load_when_a_setting_allows_it(tmp_path):
    (tmp_path / "elsewhere.png").write_bytes(png_bytes("green"))
    row = {"id": "b", "image": str(tmp_path / "elsewhere.png"), "conversations": turn()}
    report = run_sample(llava_dir(tmp_path, row), tmp_path, images_outside_root=True)
    assert report.rows_out == 3 and not report.dropped


def test_num_prompts_above_what_the_seeds_hold_is_reported(tmp_path):
    report = run_sample(llava_dir(tmp_path, None), tmp_path, num_prompts=50)
    assert report.rows_out == GOOD and read_report(tmp_path / "out")["short_of_num_prompts"] == 50 - GOOD


SAMPLE_FILE_ERRORS = {
    "seed JSON not UTF-8": (b'[{"id": "\xff\xfe"}]', "seeds.json", "byte 0xff at offset 9"),
    "seed JSON invalid": (b"[{not json", "seeds.json", "not valid JSON"),
    "seed JSON nested too deeply": (b"[" * 100000 + b"]" * 100000, "seeds.json", "nested too deeply"),
    "seed JSON not a list": (b'{"id": 1}', "seeds.json", "expected a JSON list"),
    "seed file of an unknown format": (b"a,b\n", "seeds.csv", "unknown seed format"),
    "seed TSV not UTF-8": (b"index\timage\tquestion\n1\tx\t\xe9t\xe9\n", "seeds.tsv", "byte 0xe9 at offset"),
    "seed file missing": (None, "seeds.json", "no such file"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLE_FILE_ERRORS))
def test_sample_fails_cleanly_on_an_unusable_seed_file(kind, tmp_path):
    data, name, message = SAMPLE_FILE_ERRORS[kind]
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(StageError, match=message) as caught:
        run_sample(path, tmp_path)
    assert name in str(caught.value)


def test_sample_with_every_row_bad_fails_after_its_report(tmp_path):
    (tmp_path / "seeds.json").write_text(json.dumps([{"id": "x", "image": "nowhere.png", "conversations": turn()}]))
    with pytest.raises(EmptyResult, match="1 unreadable_image"):
        run_sample(tmp_path / "seeds.json", tmp_path)
    assert read_report(tmp_path / "out")["dropped"] == {"unreadable_image": 1}


# ---- sample: VLMEvalKit TSV seeds -------------------------------------------------------------

def tsv_seeds(tmp_path: Path, bad_line: str) -> Path:
    good = base64.b64encode(png_bytes()).decode()
    lines = ["index\timage\tquestion\tanswer"] + [f"{i}\t{good}\tWhat colour {i}?\tred" for i in range(GOOD)]
    path = tmp_path / "seeds.tsv"
    path.write_text("\n".join(lines + [bad_line]) + "\n")
    return path


TSV_DROPS = {
    "image not base64": ("9\tnot*base64!\tWhat?\tred", "unreadable_image"),
    "image base64 of a truncated PNG": (f"9\t{base64.b64encode(truncated_png()).decode()}\tWhat?\tred",
                                        "unreadable_image"),
    "image base64 of a bomb": (f"9\t{base64.b64encode(bomb_png()).decode()}\tWhat?\tred", "image_too_large"),
    "question missing": (f"9\t{base64.b64encode(png_bytes()).decode()}\t\tred", "missing_field"),
    "several images in one seed cell": ("9\t['a', 'b']\tWhat?\tred", "multi_image_row"),
}


@pytest.mark.parametrize("kind", sorted(TSV_DROPS))
def test_sample_drops_a_bad_tsv_row_and_keeps_the_good_ones(kind, tmp_path):
    line, reason = TSV_DROPS[kind]
    report = run_sample(tsv_seeds(tmp_path, line), tmp_path)
    assert report.dropped == {reason: 1} and report.rows_out == GOOD
    assert "seeds.tsv" in report.examples[reason][0]


# ---- evaluate: benchmark TSVs -----------------------------------------------------------------

def bench_file(tmp_path: Path, bad_line: str | None, header: str = "index\timage\tquestion\tanswer",
               name: str = "bench.tsv") -> Path:
    good = base64.b64encode(png_bytes()).decode()
    lines = [header] + [f"{i}\t{good}\tIs it red {i}?\tyes" for i in range(GOOD)]
    path = tmp_path / name
    path.write_text("\n".join(lines + ([bad_line] if bad_line else [])) + "\n")
    return path


BENCH_DROPS = {
    "image base64 of a bomb": (f"9\t{base64.b64encode(bomb_png()).decode()}\tIs it red?\tyes", "image_too_large"),
    "image not decodable": (f"9\t{base64.b64encode(truncated_png()).decode()}\tIs it red?\tyes", "bad_image"),
    "multi-image cell nested too deeply": ("9\t" + "[" * 5000 + "]" * 5000 + "\tIs it red?\tyes", "bad_image"),
    "image refers to a row that does not exist": ("9\t77\tIs it red?\tyes", "bad_image"),
    "answer missing": (f"9\t{base64.b64encode(png_bytes()).decode()}\tIs it red?\t", "missing_field"),
    "more cells than the header": (f"9\t{base64.b64encode(png_bytes()).decode()}\tIs it red?\tyes\textra",
                                   "malformed_row"),
}


@pytest.mark.parametrize("kind", sorted(BENCH_DROPS))
def test_benchmark_rows_that_are_bad_are_dropped_and_named(kind, tmp_path):
    line, reason = BENCH_DROPS[kind]
    report = StageReport("evaluate")
    bench = benchmarks.read_benchmark(str(bench_file(tmp_path, line)), report)
    assert dict(report.dropped) == {reason: 1} and len(bench.rows) == GOOD
    assert "bench.tsv: row 4 (index 9): field" in report.examples[reason][0]


def test_a_multiple_choice_row_with_one_option_is_dropped(tmp_path):
    good = base64.b64encode(png_bytes()).decode()
    path = tmp_path / "mc.tsv"
    path.write_text("index\timage\tquestion\tanswer\tA\tB\n" + "".join(
        f"{i}\t{good}\tWhich?\tA\tred\tblue\n" for i in range(GOOD)) + f"9\t{good}\tWhich?\tA\tred\t\n")
    report = StageReport("evaluate")
    assert len(benchmarks.read_benchmark(str(path), report).rows) == GOOD
    assert dict(report.dropped) == {"missing_field": 1}


BENCH_FILE_ERRORS = {
    "benchmark not UTF-8": (b"index\timage\tquestion\tanswer\n1\tx\tr\xe9d?\tyes\n", "byte 0xe9 at offset"),
    "benchmark without question and image columns": (b"a\tb\n1\t2\n", "lacks 'question' or 'image'"),
    "benchmark with a header only": (b"index\timage\tquestion\tanswer\n", "no usable row of 0"),
    "benchmark whose every row is bad": (b"index\timage\tquestion\tanswer\n1\tnot-an-image-at-all-but-long-enough"
                                         b"-to-be-no-reference-to-another-row-index\tq?\tyes\n", "no usable row of 1"),
}


@pytest.mark.parametrize("kind", sorted(BENCH_FILE_ERRORS))
def test_an_unusable_benchmark_fails_before_any_model_loads(kind, tmp_path):
    data, message = BENCH_FILE_ERRORS[kind]
    (tmp_path / "bench.tsv").write_bytes(data)
    with pytest.raises(StageError, match=message) as caught:
        benchmarks.read_benchmark(str(tmp_path / "bench.tsv"), StageReport("evaluate"))
    assert "bench.tsv" in str(caught.value)


# ---- augment ---------------------------------------------------------------------------------

def prompts_dir(tmp_path: Path, bad: bytes) -> Path:
    d = tmp_path / "prompts"
    (d / "images").mkdir(parents=True)
    prompts = []
    for i in range(GOOD):
        (d / "images" / f"{i}.png").write_bytes(png_bytes())
        prompts.append(schema.Prompt(id=f"p{i}", images=[f"images/{i}.png"], question="What colour?", source="s",
                                     source_row=str(i)))
    (d / "images" / "bad.png").write_bytes(bad)
    prompts.append(schema.Prompt(id="bad", images=["images/bad.png"], question="What?", source="s", source_row="9"))
    schema.write_rows(d / schema.PROMPTS_FILE, prompts)
    return d


@pytest.mark.parametrize(("kind", "data", "reason"), [("truncated image", truncated_png(), "unreadable_image"),
                                                      ("decompression bomb", bomb_png(), "image_too_large")])
def test_augment_drops_a_bad_image_and_keeps_the_good_ones(kind, data, reason, tmp_path):
    report = augment.run(prompts_dir=str(prompts_dir(tmp_path, data)), output_dir=str(tmp_path / "views"),
                         params=AugmentParams(name="flip"))
    assert report.dropped == {reason: 1} and report.rows_out == GOOD
    assert "row 3 (prompt bad)" in report.examples[reason][0]


def test_the_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("VISALIGN_MAX_IMAGE_PIXELS", str(32 * 32))  # below the toy images' size
    with pytest.raises(EmptyResult, match="image_too_large"):
        augment.run(prompts_dir=str(prompts_dir(tmp_path, png_bytes())), output_dir=str(tmp_path / "views"),
                    params=AugmentParams(name="flip"))
    monkeypatch.setenv("VISALIGN_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(InputError, match="VISALIGN_MAX_IMAGE_PIXELS"):
        augment.run(prompts_dir=str(prompts_dir(tmp_path / "b", png_bytes())), output_dir=str(tmp_path / "v2"),
                    params=AugmentParams(name="flip"))


# ---- filter: responses ------------------------------------------------------------------------

def responses_dir(tmp_path: Path, extra: list[str]) -> tuple[Path, Path]:
    pdir = prompts_dir(tmp_path, png_bytes())
    rdir = tmp_path / "responses"
    rows = []
    for p in ("p0", "p1", "bad"):
        rows += [schema.Response(id=f"{p}{side}", prompt_id=p, view=view, text=f"{colour} {p}", num_tokens=2,
                                 finish_reason="eos") for side, view, colour in (("c", "clean", "red"), ("v", "v1", "blue"))]
    rdir.mkdir()
    lines = [json.dumps(schema.to_dict(r)) for r in rows] + extra
    (rdir / schema.RESPONSES_FILE).write_text("\n".join(lines) + "\n")
    return pdir, rdir


def response_line(**fields) -> str:
    row = {"id": "x", "prompt_id": "p0", "view": "clean", "text": "green", "num_tokens": 1, "finish_reason": "eos"}
    return json.dumps({**row, **fields})


@pytest.mark.parametrize(("kind", "line", "reason"), [
    ("a second clean answer to one prompt", response_line(), "duplicate_response"),
    ("an answer to a prompt that does not exist", response_line(prompt_id="ghost"), "unknown_prompt"),
])
def test_filter_drops_a_bad_response_and_pairs_the_rest(kind, line, reason, tmp_path):
    pdir, rdir = responses_dir(tmp_path, [line])
    report = filter_stage.run(prompts_dir=str(pdir), responses_dir=str(rdir), output_dir=str(tmp_path / "pairs"),
                              params=FilterParams())
    assert report.dropped == {reason: 1} and report.rows_out == 3
    pairs = {p.prompt_id: p for p in schema.read_rows(tmp_path / "pairs" / schema.PAIRS_FILE)}
    assert pairs["p0"].chosen == "red p0"  # the first answer kept, not the late one


@pytest.mark.parametrize(("kind", "line", "message"), [
    ("a row missing a required field", json.dumps({"id": "x", "prompt_id": "p0"}), "row 7: field 'view': missing"),
    ("a row that is not JSON", "{oops", "row 7: field '<row>': not valid JSON"),
    ("a row with a field of the wrong type", response_line(num_tokens="many"), "row 7: field 'num_tokens'"),
    ("a row with an unknown field", response_line(colour="red"), "row 7: field 'colour': unknown field"),
])
def test_a_malformed_row_between_stages_names_file_row_and_field(kind, line, message, tmp_path):
    pdir, rdir = responses_dir(tmp_path, [line])
    with pytest.raises(schema.SchemaError, match=message) as caught:
        filter_stage.run(prompts_dir=str(pdir), responses_dir=str(rdir), output_dir=str(tmp_path / "pairs"),
                         params=FilterParams())
    assert schema.RESPONSES_FILE in str(caught.value)


def test_a_row_file_that_is_not_utf8_names_file_and_row(tmp_path):
    pdir, rdir = responses_dir(tmp_path, [])
    with open(rdir / schema.RESPONSES_FILE, "ab") as f:
        f.write(b'{"id": "\xff"}\n')
    with pytest.raises(schema.SchemaError, match=r"row 7: field '<row>': not UTF-8: byte 0xff"):
        schema.read_rows(rdir / schema.RESPONSES_FILE)


# ---- train: pairs -----------------------------------------------------------------------------

def pairs_dir(tmp_path: Path, bad: schema.Pair, bad_image: bytes | None = None) -> Path:
    d = tmp_path / "pairs"
    (d / "images").mkdir(parents=True)
    pairs = []
    for i in range(GOOD):
        (d / "images" / f"{i}.png").write_bytes(png_bytes())
        pairs.append(schema.Pair(id=f"g{i}", images=[f"images/{i}.png"], prompt="What colour?", chosen="red",
                                 rejected="blue", prompt_id=f"p{i}"))
    if bad_image is not None:
        (d / "images" / "bad.png").write_bytes(bad_image)
    schema.write_rows(d / schema.PAIRS_FILE, pairs + [bad])
    return d


def bad_pair(**fields) -> schema.Pair:
    base = dict(id="b", images=["images/0.png"], prompt="What colour?", chosen="red", rejected="green", prompt_id="pb")
    return schema.Pair(**{**base, **fields})


TRAIN_DROPS = {
    "empty chosen": (bad_pair(chosen=""), None, "empty_answer"),
    "blank rejected": (bad_pair(rejected="  \n"), None, "empty_answer"),
    "blank prompt": (bad_pair(prompt=" "), None, "empty_prompt"),
    "chosen equal to rejected": (bad_pair(rejected="red"), None, "equal_answers"),
    "image markers not matching the images": (bad_pair(prompt="<image> vs <image>: which?"), None,
                                              "image_marker_mismatch"),
    "pair image missing": (bad_pair(images=["images/nowhere.png"]), None, "unreadable_image"),
    "pair image truncated": (bad_pair(images=["images/bad.png"]), truncated_png(), "unreadable_image"),
    "pair image a bomb": (bad_pair(images=["images/bad.png"]), bomb_png(), "image_too_large"),
    "a pair id twice": (bad_pair(id="g0"), None, "duplicate_pair"),
}


@pytest.mark.parametrize("kind", sorted(TRAIN_DROPS))
def test_train_checks_every_pair_it_reads(kind, tmp_path):
    pair, image, reason = TRAIN_DROPS[kind]
    report = StageReport("train")
    dataset, pairs = train.load_pairs_dataset(pairs_dir(tmp_path, pair, image), report=report)
    assert dict(report.dropped) == {reason: 1} and [p.id for p in pairs] == ["g0", "g1"] and len(dataset) == GOOD
    assert "pairs.jsonl: row 3" in report.examples[reason][0]


def test_train_with_no_valid_pair_fails_naming_the_reasons(tmp_path):
    d = pairs_dir(tmp_path, bad_pair(chosen=""))
    pairs = schema.read_rows(d / schema.PAIRS_FILE)
    schema.write_rows(d / schema.PAIRS_FILE, [bad_pair(id=p.id, chosen="") for p in pairs])
    with pytest.raises(EmptyResult, match="3 empty_answer"):
        train.load_pairs_dataset(d)


# ---- models ----------------------------------------------------------------------------------

def test_pickle_weights_are_refused_unless_opted_in(tiny_model, tmp_path, monkeypatch):
    import shutil

    import torch
    from safetensors.torch import load_file

    from visalign.models import load_model

    d = tmp_path / "pickled"
    shutil.copytree(tiny_model, d)
    weights = next(d.glob("*.safetensors"))
    torch.save(load_file(weights), d / "pytorch_model.bin")
    weights.unlink()
    with pytest.raises(InputError, match="pickle weights only.*VISALIGN_ALLOW_PICKLE_WEIGHTS"):
        load_model(d)
    monkeypatch.setenv("VISALIGN_ALLOW_PICKLE_WEIGHTS", "1")
    assert load_model(d).model is not None


def test_a_model_without_tokenizer_or_config_is_named(tiny_model, tmp_path):
    import shutil

    from visalign.models import load_model

    d = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_model, d)
    for name in ("tokenizer.json", "tokenizer.model", "vocab.json"):
        (d / name).unlink(missing_ok=True)
    with pytest.raises(InputError, match="no tokenizer files"):
        load_model(d)
    (tmp_path / "no_config").mkdir()
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path / "no_config")
    with pytest.raises(InputError, match="no such directory"):
        load_model(tmp_path / "nowhere")


# ---- outputs and the command line ---------------------------------------------------------------

def test_a_stage_refuses_a_uri_as_its_local_output_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="writes to a local directory"):
        sample.run(sources=[str(llava_dir(tmp_path, None))], output_dir="s3://bucket/prefix", params=SampleParams())
    assert not (tmp_path / "s3:").exists()


def test_the_cli_prints_one_line_and_exits_2_on_an_expected_error(tmp_path, capsys):
    from visalign.cli import main

    (tmp_path / "bad.json").write_bytes(b"[{not json")
    assert main(["sample", "--input", str(tmp_path / "bad.json"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "visalign sample: error: " in err and "bad.json: not valid JSON" in err and "Traceback" not in err
    assert main(["--debug", "sample", "--input", str(tmp_path / "bad.json"), "--output", str(tmp_path / "o")]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["sample", "--input", str(tmp_path / "bad.json"), "--output", str(tmp_path / "o"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_missing_input_directory_is_named_not_a_traceback(tmp_path, capsys):
    from visalign.cli import main

    assert main(["filter", "--prompts", str(tmp_path / "nowhere"), "--responses", str(tmp_path),
                 "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'nowhere' / schema.PROMPTS_FILE}: no such file" in err and "Traceback" not in err


def test_the_cli_refuses_an_s3_output_without_credentials_and_writes_no_s3_folder(tmp_path, capsys, monkeypatch):
    from visalign.cli import main

    for name in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    seeds = llava_dir(tmp_path, None)
    assert main(["sample", "--input", str(seeds), "--output", "s3://bucket/prefix"]) == 2
    assert "AWS_ENDPOINT_URL" in capsys.readouterr().err and not (tmp_path / "s3:").exists()
    assert main(["sample", "--input", str(seeds), "--output", "gs://bucket/prefix"]) == 2
    assert "unsupported URI scheme" in capsys.readouterr().err and not (tmp_path / "gs:").exists()



def test_a_checkpoint_torn_inside_a_multibyte_character_resumes_without_its_last_row(tmp_path):
    rows = [schema.Response(id=str(i), prompt_id="p", view="clean", text="答案是猫", num_tokens=4,
                            finish_reason="eos") for i in range(3)]
    path = tmp_path / schema.RESPONSES_FILE
    schema.write_rows(path, rows)
    data = path.read_bytes()
    cut = data.rindex("猫".encode()) + 1  # killed after the first byte of a three-byte character
    path.write_bytes(data[:cut])
    assert [r.id for r in schema.read_checkpoint(path, schema.Response)] == ["0", "1"]
