import pytest

from visalign import schema
from visalign.recipes import AugmentParams, RolloutParams, SampleParams
from visalign.stages import augment, rollout, sample


@pytest.fixture
def prompts_and_views(llava_seeds, tmp_path):
    pdir, vdir = tmp_path / "prompts", tmp_path / "views"
    sample.run(sources=[str(llava_seeds)], output_dir=str(pdir), params=SampleParams(num_prompts=6))
    augment.run(prompts_dir=str(pdir), output_dir=str(vdir), params=AugmentParams(name="diffusion", diffusion_step=800))
    return pdir, vdir


def test_batched_generation_matches_one_at_a_time(tiny_model, prompts_and_views):
    from visalign.models import load_model

    pdir, _ = prompts_and_views
    loaded = load_model(str(tiny_model))
    prompts = schema.read_rows(pdir / schema.PROMPTS_FILE)
    reqs = [rollout.GenerationRequest(id=p.id, images=rollout.open_images(pdir, p.images), question=p.question)
            for p in prompts]
    batched = rollout.HFEngine(loaded.model, loaded.processor, batch_size=6, max_new_tokens=5).generate(reqs)
    single = rollout.HFEngine(loaded.model, loaded.processor, batch_size=1, max_new_tokens=5).generate(reqs)
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(0 < r.num_tokens <= 5 for r in batched)
    assert all(r.finish_reason in ("eos", "length") for r in batched)


def test_rollout_writes_clean_and_augmented_and_resumes(tiny_model, prompts_and_views, tmp_path):
    pdir, vdir = prompts_and_views
    out = tmp_path / "resp"
    params = RolloutParams(batch_size=4, max_new_tokens=4, checkpoint_every=2)
    report = rollout.run(prompts_dir=str(pdir), views_dir=str(vdir), model=str(tiny_model), output_dir=str(out),
                         params=params)
    rows = schema.read_rows(out / schema.RESPONSES_FILE)
    assert report.rows_in == 6 and len(rows) == 12
    assert sorted({r.view == rollout.CLEAN for r in rows}) == [False, True]
    assert report.extra["new_tokens"] == sum(r.num_tokens for r in rows) and report.extra["tokens_per_second"] > 0
    # Simulate an interruption: keep the first chunk plus a torn line, then resume.
    lines = (out / schema.RESPONSES_FILE).read_text().splitlines()
    (out / schema.RESPONSES_FILE).write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    resumed = rollout.run(prompts_dir=str(pdir), views_dir=str(vdir), model=str(tiny_model), output_dir=str(out),
                          params=params)
    again = schema.read_rows(out / schema.RESPONSES_FILE)
    assert resumed.extra["resumed_prompts"] == 2 and resumed.extra["new_tokens"] < report.extra["new_tokens"]
    assert sorted(r.id for r in again) == sorted(r.id for r in rows)
    assert {r.id: r.text for r in again} == {r.id: r.text for r in rows}


def test_diffusion_view_is_replayed_on_the_processor_tensor(tiny_model, prompts_and_views):
    """The augmented request's pixel_values are the clean ones plus SeVa's noise, exactly."""
    from visalign.models import load_model

    pdir, vdir = prompts_and_views
    loaded = load_model(str(tiny_model))
    view = schema.read_rows(vdir / schema.VIEWS_FILE)[0]
    prompt = next(p for p in schema.read_rows(pdir / schema.PROMPTS_FILE) if p.id == view.prompt_id)
    engine = rollout.HFEngine(loaded.model, loaded.processor, batch_size=2, max_new_tokens=2)
    clean, noisy = rollout._requests_for(prompt, view, str(pdir), str(vdir))
    enc, _ = engine._encode([clean, noisy])
    expected = augment.apply_to_pixel_values(enc["pixel_values"][:1].clone(), view)
    assert not enc["pixel_values"][0].equal(enc["pixel_values"][1])
    assert enc["pixel_values"][1:].allclose(expected)
