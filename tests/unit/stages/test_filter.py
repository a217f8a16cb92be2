from visalign import schema
from visalign.recipes import FilterParams
from visalign.schema import Prompt, Response
from visalign.stages import filter as filt


def _setup(tmp_path, answers):
    pdir, rdir = tmp_path / "p", tmp_path / "r"
    (pdir / "images").mkdir(parents=True)
    prompts, responses = [], []
    for i, (clean, aug) in enumerate(answers):
        (pdir / "images" / f"{i}.png").write_bytes(b"img")
        prompts.append(Prompt(id=f"p{i}", images=[f"images/{i}.png"], question=f"q{i}", source="s", source_row=str(i)))
        if clean is not None:
            responses.append(Response(id=f"c{i}", prompt_id=f"p{i}", view="clean", text=clean, num_tokens=1, finish_reason="eos"))
        if aug is not None:
            responses.append(Response(id=f"a{i}", prompt_id=f"p{i}", view="v", text=aug, num_tokens=1, finish_reason="eos"))
    schema.write_rows(pdir / schema.PROMPTS_FILE, prompts)
    schema.write_rows(rdir / schema.RESPONSES_FILE, responses)
    return pdir, rdir


def test_pairs_drop_equal_and_strip_markers(tmp_path):
    pdir, rdir = _setup(tmp_path, [("red", "red"), ("red</s>", "blue\n"), ("a\nb", "a b"), ("x", None), ("</s>", "y")])
    report = filt.run(prompts_dir=str(pdir), responses_dir=str(rdir), output_dir=str(tmp_path / "o"), params=FilterParams())
    pairs = schema.read_rows(tmp_path / "o" / schema.PAIRS_FILE)
    assert [(p.chosen, p.rejected) for p in pairs] == [("red", "blue")]
    assert pairs[0].images == ["images/1.png"] and (tmp_path / "o" / "images" / "1.png").exists()
    assert pairs[0].provenance["rejected_view"] == "v"
    # Raw answers differ but are equal once cleaned: dropped under its own reason.
    assert report.dropped == {"equal_answers": 1, "equal_after_cleaning": 1, "missing_response": 1, "empty_answer": 1}
    assert report.rows_in == 5 and report.rows_out == 1


def test_downsampling_is_seeded(tmp_path):
    pdir, rdir = _setup(tmp_path, [(f"a{i}", f"b{i}") for i in range(20)])
    runs = [filt.run(prompts_dir=str(pdir), responses_dir=str(rdir), output_dir=str(tmp_path / f"o{k}"),
                     params=FilterParams(target_count=5, seed=3)) for k in range(2)]
    ids = [[p.id for p in schema.read_rows(tmp_path / f"o{k}" / schema.PAIRS_FILE)] for k in range(2)]
    assert len(ids[0]) == 5 and ids[0] == ids[1] and runs[0].extra["downsampled_from"] == 20
