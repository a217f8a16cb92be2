"""The mia-dpo recipe: paper values, validation of its compose/select fields, CLI and KFP adapters."""

from dataclasses import dataclass

import pytest
from PIL import Image

from visalign import recipes, schema
from visalign.recipes import ConfigError


def test_paper_values():
    r = recipes.load("mia-dpo")
    assert r.rollout.capture_attention and r.rollout.max_new_tokens == 512 and r.rollout.attention_layer is None
    assert (r.train.beta, r.train.lora_r, r.train.lora_alpha, r.train.learning_rate) == (0.1, 128, 256, 5e-5)
    assert (r.train.lr_scheduler, r.train.warmup_ratio, r.train.deepspeed, r.train.num_epochs) == (
        "linear", 0.1, "zero2", 3.0)
    assert r.select.sequence_thresholds == (0.8, 0.7, 0.6, 0.6) and r.select.grid_thresholds == (0.7, 0.6, 0.5, 0.4, 0.3)
    assert (r.select.pip_threshold, r.select.min_perplexity, r.select.max_reference_chars) == (0.8, 1.1, 512)
    assert (r.compose.cell_size, r.compose.margin, r.compose.pip_scale) == (448, 40, 0.7)
    # 5 images x LLaVA-1.5's 576 tokens and a 512-token answer fit (the 2048 default would cut image tokens)
    assert r.train.max_length >= 5 * 576 + 512


def test_mia_dpo_needs_attention_capture():
    with pytest.raises(ConfigError, match=r"rollout.capture_attention=False: .*no_attention.*set "
                                          r"rollout.capture_attention=true"):
        recipes.load("mia-dpo", "toy", overrides={"rollout.capture_attention": False})
    assert not recipes.load("seva").rollout.capture_attention  # other recipes do not need it


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        recipes.load("mia-dpo", overrides={"compose.formats": "sequence,mosaic", "compose.sequence_images": "2,6",
                                           "select.grid_thresholds": "0.7,0.6", "select.pip_threshold": 1.5,
                                           "compose.pip_scale": 1.2, "rollout.attention_layer": -1})
    text = str(e.value)
    for needle in ("'mosaic': unknown", "compose.mix", "sequence_images: 6", "grid_thresholds=(0.7, 0.6): needs one",
                   "pip_threshold=1.5", "pip_scale=1.2", "attention_layer=-1"):
        assert needle in text, needle


def test_cli_has_the_stage_subcommands(capsys):
    from visalign import cli

    for command, flag in (("compose", "--grid-layouts"), ("select", "--pip-threshold")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        assert flag in capsys.readouterr().out


@dataclass
class FakeArtifact:
    """A minimal stand-in for a KFP artifact: a path (and a URI) on local disk."""

    path: str
    uri: str = ""


def test_compose_and_select_components_call_their_stages(tmp_path):
    from visalign_pipelines import components as c

    seeds = tmp_path / "seeds"
    (seeds / "images").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(seeds / "images" / f"{i}.png")
        rows.append(schema.Prompt(id=f"p{i}", images=[f"images/{i}.png"], question="What colour?", source="s",
                                  source_row=str(i), reference="red"))
    schema.write_rows(seeds / schema.PROMPTS_FILE, rows)
    composed = FakeArtifact(str(tmp_path / "composed"))
    overrides = {"compose.formats": "sequence", "compose.mix": "1", "compose.sequence_images": "2"}
    c.compose.python_func(prompts=FakeArtifact(str(seeds)), recipe="mia-dpo", profile="toy", overrides=overrides,
                          composed=composed)
    built = schema.read_rows(tmp_path / "composed" / schema.PROMPTS_FILE)
    assert len(built) == 4 and all(len(p.images) == 2 for p in built)
    responses = [schema.Response(id=f"r{i}", prompt_id=p.id, view="clean", text="blue", num_tokens=2,
                                 finish_reason="eos", meta={"perplexity": 3.0, "attention": {
                                     "layer": 1, "rows": 1, "images": [[0.1], [0.1]], "grids": [[1, 1], [1, 1]]}})
                 for i, p in enumerate(built)]
    schema.write_rows(tmp_path / "responses" / schema.RESPONSES_FILE, responses)
    html = FakeArtifact(str(tmp_path / "hist.html"))
    c.select_pairs.python_func(prompts=composed, responses=FakeArtifact(str(tmp_path / "responses")),
                               recipe="mia-dpo", profile="toy", overrides=overrides, experiment="x",
                               pairs=FakeArtifact(str(tmp_path / "pairs")), ratio_histogram=html)
    assert len(schema.read_rows(tmp_path / "pairs" / schema.PAIRS_FILE)) == 4  # ratio 0.5 < 0.8: all rejected
    assert "data:image/png;base64," in (tmp_path / "hist.html").read_text()
