import json

import pytest

from visalign import recipes, schema
from visalign.recipes import ConfigError
from visalign.schema import Prompt, SchemaError


def test_stable_id_depends_on_content_only():
    assert schema.stable_id("a", 1) == schema.stable_id("a", 1)
    assert schema.stable_id("a", 1) != schema.stable_id("a", 2)
    assert len(schema.stable_id("x")) == 16


def test_rows_round_trip_and_errors_name_file_row_field(tmp_path):
    p = Prompt(id="1", images=["images/a.png"], question="q", source="s", source_row="0")
    path = tmp_path / schema.PROMPTS_FILE
    schema.write_rows(path, [p])
    assert schema.read_rows(path) == [p]
    path.write_text(path.read_text() + json.dumps({"id": "2", "images": ["x"], "source": "s", "source_row": "1"}) + "\n")
    with pytest.raises(SchemaError) as e:
        schema.read_rows(path)
    assert (e.value.row, e.value.field) == (2, "question") and str(path) in str(e.value)
    path.write_text('{"id": 3, "images": [], "question": "q", "source": "s", "source_row": "1"}\n')
    with pytest.raises(SchemaError, match="row 1: field 'id'"):
        schema.read_rows(path)
    path.write_text("not json\n")
    with pytest.raises(SchemaError, match="not valid JSON"):
        schema.read_rows(path)


def test_checkpoint_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "responses.jsonl"
    r = schema.Response(id="1", prompt_id="p", view="clean", text="t", num_tokens=1, finish_reason="eos")
    schema.append_rows(path, [r])
    with open(path, "a") as f:
        f.write('{"id": "2", "prompt_')
    assert schema.read_checkpoint(path, schema.Response) == [r]


def test_recipe_defaults_are_the_papers():
    r = recipes.load("seva")
    assert (r.train.beta, r.train.lora_r, r.train.lora_alpha, r.train.learning_rate) == (0.1, 1024, 2048, 2e-6)
    assert r.augment.diffusion_step == 800 and r.rollout.max_new_tokens == 512
    assert r.sample.max_questions_per_image == 2 and r.train.deepspeed == "zero3"
    assert r.train.loss_type == ("sigmoid",) and r.train.data_repeats == 2


def test_toy_profile_and_overrides_coerce_strings():
    r = recipes.load("seva", "toy", {"train.beta": "0.2", "train.merge": "true", "filter.target_count": "none",
                                     "register.guard_metrics": "a/b,c/d"})
    assert r.train.beta == 0.2 and r.train.merge is True and r.filter.target_count is None
    assert r.register.guard_metrics == ("a/b", "c/d")
    assert r.train.lora_r < 1024  # scaled down


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        recipes.load("seva", overrides={"train.beta": -1, "augment.name": "nope", "sample.bogus": 1,
                                        "augment.diffusion_step": 5000})
    text = str(e.value)
    assert "sample.bogus" in text  # unknown keys are reported before values are checked
    with pytest.raises(ConfigError) as e:
        recipes.load("seva", overrides={"train.beta": -1, "augment.name": "nope", "augment.diffusion_step": 5000,
                                        "train.precision": "fp16"})
    assert len(e.value.problems) == 4
    assert "use bf16" in str(e.value) and "diffusion_step=5000" in str(e.value)


def test_unknown_recipe_and_bad_types():
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipes.load("nope")
    with pytest.raises(ConfigError, match="expected int"):
        recipes.load("seva", overrides={"sample.num_prompts": "many"})
