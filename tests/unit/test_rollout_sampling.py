"""Rollout's sampling mode: N seeded samples per prompt, prompt templates, no-image answers and
continuation from an assistant prefix (MPO; IPA builds on it)."""

import pytest

from visalign import recipes, rollout, sample, schema
from visalign.recipes import RolloutParams, SampleParams

SAMPLING = dict(do_sample=True, temperature=1.5, top_k=0, top_p=1.0)


@pytest.fixture
def prompts(llava_seeds, tmp_path):
    pdir = tmp_path / "prompts"
    sample.run(sources=[str(llava_seeds)], output_dir=str(pdir), params=SampleParams(num_prompts=3))
    return pdir


@pytest.fixture(scope="module")
def loaded(tiny_model):
    from visalign.models import load_model

    return load_model(str(tiny_model))


def _engine(loaded, **kw):
    return rollout.HFEngine(loaded.model, loaded.processor, batch_size=4, max_new_tokens=6,
                            sampling=rollout.Sampling(**{**SAMPLING, **kw}))


def test_samples_are_reproducible_per_seed_and_differ_across_seeds(loaded, prompts):
    ps = schema.read_rows(prompts / schema.PROMPTS_FILE)
    reqs = [rollout.GenerationRequest(id=f"{p.id}-{k}", images=rollout.open_images(prompts, p.images),
                                      question=p.question) for p in ps for k in range(4)]
    import torch

    torch.manual_seed(123)
    a = [r.text for r in _engine(loaded, seed=7).generate(reqs)]
    torch.manual_seed(999)  # the caller's random state does not matter
    b = [r.text for r in _engine(loaded, seed=7).generate(reqs)]
    c = [r.text for r in _engine(loaded, seed=8).generate(reqs)]
    assert a == b
    assert a != c
    assert len(set(a)) > 1  # temperature 1.5 on an untrained model: the samples differ


def test_greedy_is_the_default_and_ignores_the_seed(loaded, prompts):
    ps = schema.read_rows(prompts / schema.PROMPTS_FILE)
    reqs = [rollout.GenerationRequest(id=p.id, images=rollout.open_images(prompts, p.images), question=p.question)
            for p in ps]
    greedy = rollout.HFEngine(loaded.model, loaded.processor, batch_size=4, max_new_tokens=6)
    assert greedy.sampling.generate_kwargs() == {"do_sample": False}
    assert [r.text for r in greedy.generate(reqs)] == [r.text for r in _engine(loaded, do_sample=False, seed=5)
                                                       .generate(reqs)]


def test_assistant_prefix_is_continued_and_not_repeated(loaded, prompts):
    p = schema.read_rows(prompts / schema.PROMPTS_FILE)[0]
    engine = rollout.HFEngine(loaded.model, loaded.processor, batch_size=2, max_new_tokens=4)
    plain = rollout.GenerationRequest(id="a", images=[], question=p.question)
    prefixed = rollout.GenerationRequest(id="b", images=[], question=p.question, assistant_prefix=" yellow")
    enc = engine._encode([plain, prefixed])
    tok = loaded.processor.tokenizer
    texts = tok.batch_decode(enc["input_ids"], skip_special_tokens=False)
    assert texts[1].endswith(texts[0].replace("<pad>", "") + " yellow")
    assert "pixel_values" not in enc  # no image asked for, none sent
    out = engine.generate([prefixed])[0]
    assert out.num_tokens > 0  # the continuation alone: the prefix is the caller's to join


def test_run_writes_n_samples_per_prompt_with_cot_and_no_image(tiny_model, prompts, tmp_path):
    params = RolloutParams(batch_size=8, max_new_tokens=4, num_samples=3, prompt_template="cot", with_image=False,
                           seed=1, **SAMPLING)
    report = rollout.run(prompts_dir=str(prompts), model=str(tiny_model), output_dir=str(tmp_path / "r"),
                         params=params)
    rows = schema.read_rows(tmp_path / "r" / schema.RESPONSES_FILE)
    assert report.rows_in == 3 and len(rows) == 9 and len({r.id for r in rows}) == 9
    assert sorted(r.sample_index for r in rows) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert report.extra["num_samples"] == 3 and report.extra["with_image"] is False
    again = rollout.run(prompts_dir=str(prompts), model=str(tiny_model), output_dir=str(tmp_path / "r2"),
                        params=params)
    assert again.rows_out == 9
    assert ({r.id: r.text for r in schema.read_rows(tmp_path / "r2" / schema.RESPONSES_FILE)}
            == {r.id: r.text for r in rows})


def test_cot_template_ends_with_the_final_answer_instruction():
    q = rollout.render_question("How many circles?", "cot")
    assert q.startswith("How many circles?") and "Final answer:" in q
    assert rollout.render_question("Q?", "plain") == "Q?"
    with pytest.raises(ValueError, match="prompt_template='nope'"):
        rollout.render_question("Q?", "nope")


def test_bad_sampling_settings_are_reported_together():
    with pytest.raises(recipes.ConfigError) as e:
        recipes.load("seva", overrides={"rollout.num_samples": 4, "rollout.temperature": 0,
                                        "rollout.top_p": 1.5, "rollout.prompt_template": "x"})
    text = str(e.value)
    for needle in ("rollout.num_samples=4", "rollout.temperature=0", "rollout.top_p=1.5", "prompt_template='x'"):
        assert needle in text
