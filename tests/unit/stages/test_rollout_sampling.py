"""Rollout's sampling mode: N seeded samples per prompt, prompt templates, no-image answers and
continuation from an assistant prefix (MPO; IPA builds on it)."""

import pytest

from visalign import recipes, schema
from visalign.recipes import RolloutParams, SampleParams
from visalign.stages import rollout, sample

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
    prefixed = rollout.GenerationRequest(id="b", images=[], question=p.question, assistant_prefix="yellow")
    enc, _ = engine._encode([plain, prefixed])
    tok = loaded.processor.tokenizer
    texts = tok.batch_decode(enc["input_ids"], skip_special_tokens=False)
    # the tiny template's assistant turn is "ASSISTANT: <answer></s>": the prefix sits after its space
    assert texts[1].endswith(texts[0].replace("<pad>", "") + " yellow")
    assert "pixel_values" not in enc  # no image asked for, none sent
    out = engine.generate([prefixed])[0]
    assert out.num_tokens > 0  # the continuation alone: the prefix is the caller's to join
    # ... verbatim, its leading whitespace kept: it may start a new word or end the prefix's last one
    import torch

    reqs = [rollout.GenerationRequest(id=w, images=[], question="What colour is the circle?", assistant_prefix=w)
            for w in ("red", "yellow", "There are", "no")]
    outs = [engine.generate([r])[0].text for r in reqs]
    for r, text in zip(reqs, outs, strict=True):
        one, _ = engine._encode([r])
        with torch.inference_mode():
            ids = loaded.model.generate(**one, do_sample=False, max_new_tokens=4, pad_token_id=tok.pad_token_id)
        assert text == tok.decode(ids[0, one["input_ids"].shape[1]:], skip_special_tokens=True).rstrip()
    assert any(t[:1].isspace() for t in outs)  # the check above has a leading space to keep


@pytest.mark.parametrize("with_image", [False, True])
def test_prefixed_prompt_tokenises_as_the_training_sequence(loaded, prompts, with_image):
    """prompt + assistant prefix gives the same token ids as the start of the sequence TRL trains on
    (prompt + an assistant message beginning with that prefix), image tokens included."""
    from trl.data_utils import apply_chat_template

    p = schema.read_rows(prompts / schema.PROMPTS_FILE)[0]
    images = rollout.open_images(prompts, p.images) if with_image else []
    answer = "red  circle, at the top"
    prefix = answer[:len("red  circle,")]  # whitespace as written
    engine = rollout.HFEngine(loaded.model, loaded.processor, batch_size=1, max_new_tokens=2)
    enc, _ = engine._encode([rollout.GenerationRequest(id="x", images=images, question=p.question,
                                                    assistant_prefix=prefix)])
    ours = enc["input_ids"][0].tolist()
    turn = lambda text: [{"role": "assistant", "content": [{"type": "text", "text": text}]}]  # noqa: E731
    rendered = apply_chat_template({"prompt": rollout.user_message(p.question, len(images)), "chosen": turn(answer),
                                    "rejected": turn("blue")}, loaded.processor)
    train_ids = loaded.processor(images=images or None, text=[rendered["prompt"] + rendered["chosen"]],
                                 return_tensors="pt")["input_ids"][0].tolist()
    assert train_ids[:len(ours)] == ours
    assert loaded.processor.tokenizer.decode(train_ids[len(ours):]).startswith(" at the top")


def _own_prompts(d, n_with, n_without=0):
    """Prompts that ask the very same question (different ids); the last `n_without` have no reference."""
    d.mkdir(parents=True, exist_ok=True)
    ps = [schema.Prompt(id=f"p{i}", images=[], question="What colour is the circle?", source="s.json",
                        source_row=str(i), reference=None if i >= n_with else "red", answer_type="short")
          for i in range(n_with + n_without)]
    schema.write_rows(d / schema.PROMPTS_FILE, ps)
    return d


def test_samples_beyond_one_batch_differ_and_reproduce_across_runs_and_resume(tiny_model, tmp_path):
    """N > batch_size: each batch of a prompt's samples is seeded apart (else the copies repeat
    batch-wise), so are two prompts asking the same question; a rerun and a resume reproduce them."""
    pdir = _own_prompts(tmp_path / "p", n_with=2)
    params = RolloutParams(batch_size=2, max_new_tokens=6, num_samples=6, with_image=False, seed=4,
                           checkpoint_every=1, **SAMPLING)

    def texts(out):
        rows = schema.read_rows(out / schema.RESPONSES_FILE)
        return {pid: [r.text for r in sorted((r for r in rows if r.prompt_id == pid), key=lambda r: r.sample_index)]
                for pid in ("p0", "p1")}

    rollout.run(prompts_dir=str(pdir), model=str(tiny_model), output_dir=str(tmp_path / "a"), params=params)
    a = texts(tmp_path / "a")
    for samples in a.values():
        batches = [tuple(samples[i:i + 2]) for i in range(0, 6, 2)]
        assert len(set(batches)) == 3, samples  # no batch is a copy of another
    assert a["p0"] != a["p1"]  # same question, another prompt: another stream
    rollout.run(prompts_dir=str(pdir), model=str(tiny_model), output_dir=str(tmp_path / "b"), params=params)
    assert texts(tmp_path / "b") == a
    lines = (tmp_path / "a" / schema.RESPONSES_FILE).read_text().splitlines()
    (tmp_path / "a" / schema.RESPONSES_FILE).write_text("\n".join(lines[:6]) + "\n")  # p0's chunk only
    resumed = rollout.run(prompts_dir=str(pdir), model=str(tiny_model), output_dir=str(tmp_path / "a"),
                          params=params)
    assert resumed.extra["resumed_prompts"] == 1 and texts(tmp_path / "a") == a


def test_prompts_without_reference_get_their_own_sample_count(tiny_model, tmp_path):
    pdir = _own_prompts(tmp_path / "p", n_with=2, n_without=3)
    params = RolloutParams(batch_size=8, max_new_tokens=3, num_samples=4, samples_without_reference=2,
                           with_image=False, **SAMPLING)
    report = rollout.run(prompts_dir=str(pdir), model=str(tiny_model), output_dir=str(tmp_path / "r"), params=params)
    rows = schema.read_rows(tmp_path / "r" / schema.RESPONSES_FILE)
    per_prompt = {pid: sorted(r.sample_index for r in rows if r.prompt_id == pid) for pid in {r.prompt_id for r in rows}}
    assert per_prompt == {"p0": [0, 1, 2, 3], "p1": [0, 1, 2, 3], "p2": [0, 1], "p3": [0, 1], "p4": [0, 1]}
    assert report.extra["prompts_with_reference"] == 2 and report.extra["prompts_without_reference"] == 3
    assert report.extra["samples_without_reference"] == 2 and report.rows_out == 14
    assert RolloutParams().samples_without_reference == 1  # MPO's DropoutNTP needs one answer


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
                                        "rollout.top_p": 1.5, "rollout.prompt_template": "x",
                                        "rollout.samples_without_reference": 0})
    text = str(e.value)
    for needle in ("rollout.num_samples=4", "rollout.temperature=0", "rollout.top_p=1.5", "prompt_template='x'",
                   "rollout.samples_without_reference=0"):
        assert needle in text
    with pytest.raises(recipes.ConfigError, match="samples_without_reference=3: greedy"):
        recipes.load("seva", overrides={"rollout.samples_without_reference": 3})
