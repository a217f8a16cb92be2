"""Conformance of every stage on the VLM families users bring (tests/unit/families.py: tiny random
models built from transformers' own configs and processor classes).

For each family: it loads through models.load_model; batched rollout equals one prompt at a time
(texts and last-step logits), single- and multi-image prompts; attention capture finds as many
tokens per image as the model has image features, and the same values in every batch layout; the
diffusion replay changes exactly its own request's image pixels, identically in every batch layout;
two DPO steps train an adapter that reloads; evaluate scores a benchmark. The README's "Model
support" table is what these tests hold each family to: a "yes" cell must pass, a "no" must fail
with a clear error, and its rows must be the families built here.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from families import FAMILIES, build
from PIL import Image, ImageDraw

from visalign import image_layout, schema
from visalign.recipes import TrainParams
from visalign.schema import Pair, View
from visalign.stages import augment
from visalign.stages.rollout import GenerationRequest, HFEngine

NAMES = list(FAMILIES)
README = Path(__file__).resolve().parents[2] / "README.md"
COLUMNS = ("load", "rollout", "SeVa replay", "attention capture", "MIA-DPO grid / pic-in-pic", "train", "evaluate")


def support_table() -> dict[str, dict[str, bool]]:
    """README's model support table: family -> column -> supported."""
    section = README.read_text().split("## Model support", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert tuple(header[1:]) == COLUMNS, f"README model support columns {header[1:]} != {COLUMNS}"
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert all(c in ("yes", "no") for c in cells[1:]), f"README support row {line!r}: cells are yes or no"
        table[cells[0].strip("`")] = {col: c == "yes" for col, c in zip(COLUMNS, cells[1:], strict=True)}
    return table


SUPPORT = support_table()


def supported(name: str, column: str) -> bool:
    return SUPPORT[name][column]


def claimed(name: str, column: str) -> None:
    """A test that shows a stage working: the README must claim it (a "no" there needs a test that
    expects the stage's clear error instead)."""
    assert supported(name, column), f"README says {name} does not support {column!r}, yet the suite checks it works"


def _img(colour: str, size: tuple[int, int]) -> Image.Image:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).ellipse((2, 2, size[0] - 3, size[1] - 3), fill=colour)
    return im


def _requests() -> list[GenerationRequest]:
    """Single images of two shapes (tiling/anyres processors tile them differently) and a two-image
    sequence prompt (MIA-DPO's format)."""
    return [
        GenerationRequest(id="square", images=[_img("red", (32, 32))], question="What colour is the circle?"),
        GenerationRequest(id="wide", images=[_img("blue", (64, 32))], question="What colour?"),
        GenerationRequest(id="two", images=[_img("green", (32, 32)), _img("yellow", (32, 64))],
                          question="Image1: <image>\nImage2: <image>\nIn Image2, what colour is the circle?"),
        GenerationRequest(id="tall", images=[_img("red", (32, 64))], question="Describe the image."),
    ]


@pytest.fixture(scope="module", params=NAMES)
def family(request, tmp_path_factory):
    from visalign.models import load_model

    path = build(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, path, load_model(str(path), device="cpu")


def _engine(loaded, batch_size: int, **kw) -> HFEngine:
    return HFEngine(loaded.model, loaded.processor, batch_size=batch_size, max_new_tokens=4, **kw)


def test_load_generate_and_batch_equals_one_at_a_time(family):
    import torch

    name, _, loaded = family
    claimed(name, "load")  # the family fixture loaded it through models.load_model
    claimed(name, "rollout")
    requests = _requests()
    batched = _engine(loaded, 4).generate(requests)
    alone = [_engine(loaded, 1).generate([r])[0] for r in requests]
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.num_tokens for r in batched] == [r.num_tokens for r in alone]
    engine = _engine(loaded, 4)
    with torch.inference_mode():
        enc, _ = engine._encode(requests)
        last = loaded.model(**enc).logits[:, -1]  # left padding: the last position is every prompt's last token
        for i, r in enumerate(requests):
            one, _ = engine._encode([r])
            torch.testing.assert_close(last[i], loaded.model(**one).logits[0, -1], atol=2e-4, rtol=1e-4)


def _image_features(model, enc) -> list[int]:
    """How many features the model's own get_image_features gives each image (or the prompt in all)."""
    import torch

    accepted = inspect.signature(model.get_image_features).parameters
    kwargs = {k: v for k, v in enc.items() if k in accepted and k != "input_ids"}
    with torch.inference_mode():
        out = model.get_image_features(**kwargs)
    feats = getattr(out, "pooler_output", out)
    hidden = model.config.get_text_config().hidden_size
    if isinstance(feats, (list, tuple)):
        return [f.reshape(-1, hidden).shape[0] for f in feats]
    return [feats.reshape(-1, hidden).shape[0]]


def test_capture_counts_each_images_features_and_is_layout_independent(family):
    import torch

    name, _, loaded = family
    claimed(name, "attention capture")
    requests = _requests()
    engine = _engine(loaded, 1)
    for r in requests:
        enc, layout = engine._encode([r])
        layout = image_layout.layout(enc, loaded.processor, loaded.model.config, [len(r.images)])
        ours = [len(t) for t in layout.tokens[0]]
        model_counts = _image_features(loaded.model, enc)
        if len(model_counts) == len(ours):
            assert ours == model_counts, f"{name} {r.id}: image tokens per image {ours}, features {model_counts}"
        else:
            assert sum(ours) == sum(model_counts), f"{name} {r.id}: {ours} tokens, {model_counts} features"
        ids = enc["input_ids"][0]
        token_id = image_layout.image_token_id(loaded.model.config)
        assert sum(ours) == int((ids == token_id).sum())
    batched = _engine(loaded, 4, capture_attention=True, attention_layer=1).generate(requests)
    alone = [_engine(loaded, 1, capture_attention=True, attention_layer=1).generate([r])[0] for r in requests]
    for b, a, r in zip(batched, alone, requests, strict=True):
        got, want = b.capture["attention"], a.capture["attention"]
        assert len(got["images"]) == len(r.images) and got["grids"] == want["grids"]
        for g, w in zip(got["images"], want["images"], strict=True):
            torch.testing.assert_close(torch.tensor(g), torch.tensor(w), atol=1e-5, rtol=1e-4)


def _noise(view_seed: int):
    view = View(id="v", prompt_id="p", name="diffusion", space="tensor", seed=view_seed,
                params={"step": 500, "timesteps": 1000, "beta_start": 1e-5, "beta_end": 5e-3})
    return lambda pv: augment.apply_to_pixel_values(pv, view)


def test_diffusion_replay_changes_exactly_the_requests_own_image_pixels(family):
    import dataclasses

    import torch

    name, _, loaded = family
    claimed(name, "SeVa replay")
    requests = _requests()
    engine = _engine(loaded, 4)
    clean, _ = engine._encode(requests)
    for target in range(len(requests)):
        noised = [dataclasses.replace(r, pixel_transform=_noise(7) if i == target else None)
                  for i, r in enumerate(requests)]
        enc, layout = engine._encode(noised)
        changed = enc["pixel_values"] != clean["pixel_values"]
        regions = [idx for im in layout.regions[target] for idx in im]
        mine = torch.zeros_like(changed)
        for idx in regions:
            mine[idx] = True
        assert not (changed & ~mine).any(), f"{name}: noise outside request {target}'s images"
        assert changed[mine].float().mean() > 0.99, f"{name}: request {target}'s images were not all noised"
        # the same noise on the same pixels when the request is alone in its batch
        one, one_layout = engine._encode([noised[target]])
        torch.testing.assert_close(
            image_layout.gather(enc["pixel_values"], regions),
            image_layout.gather(one["pixel_values"], [i for im in one_layout.regions[0] for i in im]))
        # the model sees it: this prompt's logits move, the others' do not
        with torch.inference_mode():
            base = loaded.model(**clean).logits[:, -1]
            moved = loaded.model(**enc).logits[:, -1]
        others = [i for i in range(len(requests)) if i != target]
        torch.testing.assert_close(moved[others], base[others])
        assert not torch.equal(moved[target], base[target]), f"{name}: the noise did not reach the model"


@pytest.fixture
def pairs_dir(tmp_path):
    d = tmp_path / "pairs"
    (d / "images").mkdir(parents=True)
    pairs = []
    for i, (colour, size) in enumerate([("red", (32, 32)), ("blue", (64, 32)), ("green", (32, 64)),
                                        ("yellow", (32, 32))]):
        _img(colour, size).save(d / "images" / f"{i}.png")
        images = [f"images/{i}.png"] + ([f"images/{(i + 1) % 4}.png"] if i == 3 else [])
        prompt = "Image1: <image>\nImage2: <image>\nWhat colour?" if len(images) == 2 else "What colour?"
        pairs.append(Pair(id=str(i), images=images, prompt=prompt, chosen=f"It is {colour}.", rejected="No idea at all",
                          prompt_id=f"p{i}"))
    schema.write_rows(d / schema.PAIRS_FILE, pairs)
    return d


def test_two_dpo_steps_then_the_adapter_reloads_and_generates(family, pairs_dir, tmp_path, monkeypatch):
    from visalign.models import load_model
    from visalign.stages import train

    name, path, _ = family
    claimed(name, "train")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    params = TrainParams(lora_r=4, lora_alpha=8, learning_rate=1e-3, per_device_batch_size=2,
                         gradient_accumulation_steps=1, max_length=512, deepspeed=None, gradient_checkpointing=False,
                         warmup_ratio=0.0, data_repeats=1, num_epochs=1)
    report = train.run(pairs_dir=str(pairs_dir), model=str(path), output_dir=str(tmp_path / "adapter"), params=params)
    assert report.extra["steps"] == 2 and report.extra["final_loss"] == report.extra["final_loss"]  # not NaN
    # The reference log-probs precomputed per pair (this family's collator, image tokens, padding) train the same.
    pre = train.run(pairs_dir=str(pairs_dir), model=str(path), output_dir=str(tmp_path / "pre"),
                    params=dataclasses.replace(params, precompute_reference="on", reference_batch_size=3))
    assert pre.extra["reference"]["computed"] == 4 and report.extra["reference"]["precomputed"] is False
    assert pre.extra["final_loss"] == pytest.approx(report.extra["final_loss"], abs=1e-4)
    adapter = load_model(str(tmp_path / "adapter"), device="cpu")
    from peft import PeftModel

    assert isinstance(adapter.model, PeftModel)
    out = _engine(adapter, 2).generate(_requests()[:2])
    assert len(out) == 2


def test_evaluate_scores_a_benchmark(family, tmp_path, monkeypatch):
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "stages"))
    from test_evaluate import mc_tsv, pope_tsv

    from visalign.recipes import EvaluateParams
    from visalign.stages import evaluate

    name, path, _ = family
    claimed(name, "evaluate")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    benches = [str(pope_tsv(tmp_path / "toy_pope.tsv")), str(mc_tsv(tmp_path / "toy_mc.tsv"))]
    evaluate.run(benchmarks=benches, models={"base": str(path)}, output_dir=str(tmp_path / "eval"),
                 params=EvaluateParams(batch_size=4, max_new_tokens=3))
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["_meta"]["rows"] == {"toy_pope": 6, "toy_mc": 4}
    assert 0.0 <= results["base"]["toy_pope"]["accuracy"] <= 1.0


def test_readme_support_table_names_every_family():
    assert set(SUPPORT) == set(NAMES), f"README model support rows {sorted(SUPPORT)} != suite families {NAMES}"


def test_paligemma_answers_are_causal_suffix_tokens_in_training(pairs_dir, tmp_path):
    """PaliGemma attends bidirectionally over token_type_ids == 0: the collator must mark answers 1."""
    from visalign.models import load_processor
    from visalign.stages import train

    processor = load_processor(build("paligemma", tmp_path / "pg"))
    dataset, _ = train.load_pairs_dataset(pairs_dir)
    out = train.preference_collator(processor, 512)([dataset[0], dataset[1]])
    answer, real = out["completion_mask"].bool(), out["attention_mask"].bool()
    assert "labels" not in out and answer.any()
    assert (out["token_type_ids"][answer] == 1).all() and (out["token_type_ids"][real & ~answer] == 0).all()
    assert train.preference_collator(load_processor(build("llava", tmp_path / "llava")), 512) is None  # TRL's own


def test_mia_dpo_grid_ratios_need_a_token_map_of_known_geometry(family):
    """Grid and pic-in-pic ratios read the image's tokens as a map over the canvas: every single-image
    prompt's layout gives one (rows x cols = its tokens, or its joined tiles), or select refuses grid
    prompts naming the layout."""
    from visalign.mia_dpo.select import attention_ratio
    from visalign.schema import Prompt

    name, _, loaded = family
    singles = [r for r in _requests() if len(r.images) == 1]
    results = _engine(loaded, 4, capture_attention=True, attention_layer=1).generate(singles)
    known = []
    for r, res in zip(singles, results, strict=True):
        att = res.capture["attention"]
        grid, order = att["grids"][0], (att.get("grid_order") or [None])[0]
        width, height = r.images[0].size
        meta = {"format": "grid", "canvas": [width, height], "target": 1,
                "cells": [[0, 0, width / 2, height], [width / 2, 0, width, height]]}
        prompt = Prompt(id=r.id, images=["x.png"], question=r.question, source="t", source_row="0", meta=meta)
        if grid is None:
            with pytest.raises(ValueError, match=re.escape(att["layout"]) + ".*compose sequence prompts only"):
                attention_ratio(prompt, res.capture)
            known.append(False)
            continue
        assert grid[0] * grid[1] == len(order if order is not None else att["images"][0])
        from visalign.mia_dpo.attention import CanvasMismatch

        try:
            ratio = attention_ratio(prompt, res.capture)
        except CanvasMismatch:  # a centre-cropping processor on a non-square canvas: refused, as it should be
            continue
        assert 0.0 <= ratio <= 1.0
        known.append(True)
    assert all(known) == supported(name, "MIA-DPO grid / pic-in-pic"), f"{name}: grid known per image {known}"


NO_TORCHVISION = pytest.mark.skipif(__import__("importlib.util").util.find_spec("torchvision") is not None,
                                    reason="with torchvision the whole processor loads")


@NO_TORCHVISION
def test_a_processor_whose_video_part_cannot_load_loads_without_it_and_says_why(tmp_path, caplog):
    from visalign.models import load_processor

    path = build("qwen2_vl", tmp_path / "q")
    with caplog.at_level("WARNING", logger="visalign.models"):
        processor = load_processor(path)
    assert "without its video processor" in caplog.text and "torchvision" in caplog.text
    assert type(processor).__name__ == "Qwen2VLProcessor" and processor.image_processor is not None
    processor.save_pretrained(tmp_path / "again")  # saves as the family's class, loads the same way again
    assert type(load_processor(tmp_path / "again")).__name__ == "Qwen2VLProcessor"


@NO_TORCHVISION
def test_a_processor_class_that_needs_torchvision_is_named(tmp_path):
    import json

    from visalign.models import load_processor

    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "PixtralProcessor"}))
    with pytest.raises(RuntimeError, match="PixtralProcessor cannot be built here.*torchvision"):
        load_processor(tmp_path)


def test_a_missing_family_extra_is_named_with_its_install_line(tmp_path, monkeypatch):
    import transformers

    from visalign.models import load_processor

    def refuse(*args, **kwargs):  # what SmolVLMProcessor raises where num2words is not installed
        raise ImportError("Package `num2words` is required to run SmolVLM processor. Install it with `pip install "
                          "num2words`.")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    with pytest.raises(ImportError, match=re.escape("pip install 'visalign[families]'")):
        load_processor(tmp_path)
