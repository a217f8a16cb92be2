"""MIA-DPO's selection: the rules in order, post-selection, the ratio report and histogram."""

import json

import pytest
from PIL import Image

from visalign import schema
from visalign.mia_dpo import attention
from visalign.mia_dpo import select as sel
from visalign.recipes import SelectParams
from visalign.schema import Prompt, Response


def _prompt(pid, fmt="sequence", n=2, target=2, reference="red", **meta):
    return Prompt(id=pid, images=[f"images/{pid}.png"], question="Image1: <image>\nImage2: <image>\nIn Image2, q?",
                  source="s", source_row="1", reference=reference,
                  meta={"format": fmt, "num_images": n, "target": target, **meta})


def _response(pid, text, per_image, ppl=2.0):
    return Response(id=f"r-{pid}", prompt_id=pid, view="clean", text=text, num_tokens=2, finish_reason="eos",
                    meta={"attention": {"layer": 1, "rows": 1, "images": per_image, "grids": [[2, 2]] * len(per_image)},
                          "mean_max_logprob": -0.5, "perplexity": ppl})


LOOKED_AWAY = [[0.9, 0.9], [0.1, 0.1]]  # ratio to image 2 = 0.1
LOOKED_AT = [[0.1, 0.1], [0.9, 0.9]]  # ratio 0.9 >= 0.8


@pytest.mark.parametrize("prompt,response,reason", [
    (_prompt("a"), _response("a", "blue", LOOKED_AWAY), None),
    (_prompt("b"), _response("b", "blue", LOOKED_AT), "attended_target"),
    (_prompt("c"), _response("c", "blue", LOOKED_AWAY, ppl=1.05), "low_perplexity"),
    (_prompt("d"), _response("d", "", LOOKED_AWAY), "empty"),
    (_prompt("e", reference="r" * 512), _response("e", "blue", LOOKED_AWAY), "long_reference"),
    (_prompt("f"), _response("f", " Red. ", LOOKED_AWAY), "matches_reference"),
    (_prompt("g"), _response("g", "a much longer answer", LOOKED_AWAY), "length_ratio"),
])
def test_rules_in_order(prompt, response, reason):
    ratio = sel.attention_ratio(prompt, response.meta)
    got, chosen, rejected = sel.judge(prompt, response, ratio, SelectParams(), ("</s>",))
    assert got == reason
    if reason is None:
        assert (chosen, rejected) == ("red", "blue")  # chosen = the reference


def test_post_selection_thresholds_are_parameters():
    p, r = _prompt("a", reference="the red one"), _response("a", "the blue two", LOOKED_AWAY)
    assert sel.levenshtein("the red one", "the blue two") == 7
    assert sel.judge(p, r, 0.1, SelectParams(max_edit_distance=6), ())[0] == "edit_distance"
    assert sel.judge(p, r, 0.1, SelectParams(max_edit_distance=7), ())[0] is None
    long = _response("a", "red " * 20, LOOKED_AWAY)
    assert sel.judge(p, long, 0.1, SelectParams(max_length_ratio=None), ())[0] is None


def test_run_writes_pairs_ratio_distribution_and_histogram(tmp_path):
    prompts_dir, responses_dir = tmp_path / "c", tmp_path / "r"
    (prompts_dir / "images").mkdir(parents=True)
    grid_meta = {"cells": [[0, 0, 10, 20], [10, 0, 20, 20]], "canvas": [20, 20]}
    prompts = [_prompt("a"), _prompt("b"), _prompt("g1", fmt="grid", n=2, target=1, **grid_meta),
               _prompt("p1", fmt="pic_in_pic", n=2, target=1, centre_box=[6, 6, 14, 14], canvas=[20, 20])]
    for p in prompts:
        Image.new("RGB", (8, 8)).save(prompts_dir / p.images[0])
    schema.write_rows(prompts_dir / schema.PROMPTS_FILE, prompts)
    responses = [_response("a", "blue", LOOKED_AWAY), _response("b", "blue", LOOKED_AT),
                 _response("g1", "green", [[0.0, 1.0, 0.0, 1.0]]),  # all on the right cell: ratio 0
                 _response("p1", "green", [[1.0, 1.0, 1.0, 1.0]]),  # 2x2 map, no token centre in the box
                 _response("zz", "orphan", LOOKED_AWAY),
                 Response(id="nocap", prompt_id="a", view="clean", text="x", num_tokens=1, finish_reason="eos")]
    schema.write_rows(responses_dir / schema.RESPONSES_FILE, responses)
    hist = tmp_path / "artifact" / "hist.png"
    report = sel.run(prompts_dir=str(prompts_dir), responses_dir=str(responses_dir), output_dir=str(tmp_path / "out"),
                     params=SelectParams(max_length_ratio=None), histogram_path=str(hist))
    d = report.to_dict()
    assert d["rows_in"] == 6 and d["rows_out"] == 3
    assert d["dropped"] == {"attended_target": 1, "unknown_prompt": 1, "no_attention": 1}
    assert d["pairs_per_format_and_images"] == {"grid/2": 1, "pic_in_pic/2": 1, "sequence/2": 1}
    seq = d["ratios"]["sequence/2"]
    assert seq["n"] == 2 and seq["kept"] == 1 and seq["threshold"] == 0.8 and sum(seq["histogram"]) == 2
    assert d["ratios"]["grid/2"]["threshold"] == 0.7 and d["ratios"]["grid/2"]["max"] == 0.0
    pairs = schema.read_rows(tmp_path / "out" / schema.PAIRS_FILE)
    assert {p.chosen for p in pairs} == {"red"} and all((tmp_path / "out" / p.images[0]).exists() for p in pairs)
    assert pairs[0].provenance["attention_ratio"] == pytest.approx(0.1)
    assert hist.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / sel.RATIOS_FILE).read_text())["sequence/2"] == pytest.approx([0.1, 0.9])


def _small_run_dirs(tmp_path, grid_meta=None, grid_att=None, grid=None):
    prompts_dir, responses_dir = tmp_path / "c", tmp_path / "r"
    (prompts_dir / "images").mkdir(parents=True)
    prompts, responses = [_prompt("a")], [_response("a", "blue", LOOKED_AWAY)]
    if grid_meta:
        prompts.append(_prompt("g1", fmt="grid", n=2, target=1, **grid_meta))
        responses.append(_response("g1", "green", grid_att))
        responses[-1].meta["attention"]["grids"] = [grid]
    for p in prompts:
        Image.new("RGB", (8, 8)).save(prompts_dir / p.images[0])
    schema.write_rows(prompts_dir / schema.PROMPTS_FILE, prompts)
    schema.write_rows(responses_dir / schema.RESPONSES_FILE, responses)
    return str(prompts_dir), str(responses_dir)


def test_mlflow_run_holds_the_recipe_and_a_retried_step_reuses_it(tmp_path, monkeypatch):
    import mlflow

    from visalign import recipes

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)  # the sqlite store puts artifacts in ./mlruns
    prompts_dir, responses_dir = _small_run_dirs(tmp_path)
    recipe = recipes.load("mia-dpo", "toy")

    def attempt(out):
        return sel.run(prompts_dir=prompts_dir, responses_dir=responses_dir, output_dir=str(tmp_path / out),
                       params=recipe.select, recipe=recipe, experiment="x").extra["mlflow_run_id"]

    first = attempt("out")
    assert attempt("out") == first  # the retry logs to the run its first attempt opened
    other = attempt("elsewhere")
    assert other != first
    params = mlflow.get_run(first).data.params
    assert params["recipe.name"] == "mia-dpo" and params["recipe.select.pip_threshold"] == "0.8"
    assert params["recipe.train.max_length"] == str(recipe.train.max_length)
    assert len(mlflow.search_runs(experiment_names=["x"])) == 2


def test_a_grid_canvas_the_token_map_does_not_follow_stops_the_stage(tmp_path):
    # a wide collage under a square 8x8 map: a centre-cropping processor cut it; no ratio is right
    meta = {"cells": [[0, 0, 20, 20], [20, 0, 40, 20]], "canvas": [40, 20]}
    prompts_dir, responses_dir = _small_run_dirs(tmp_path, meta, [[1.0] * 64], grid=[8, 8])
    with pytest.raises(attention.CanvasMismatch, match=r"response r-g1 .*compose.square_canvas=true"):
        sel.run(prompts_dir=prompts_dir, responses_dir=responses_dir, output_dir=str(tmp_path / "out"),
                params=SelectParams())
