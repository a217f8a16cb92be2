"""IPA's round stages: contrastive sampling + reflective revision (ipa_collect) and verification +
pairing + progressive merging (ipa_pairs), on the tiny model and the local HTTP stand-in."""

import dataclasses
import json
from collections import Counter

import pytest
from verifier_standin import StandInEndpoint

from visalign import recipes, schema
from visalign.errors import EmptyResult, InputError
from visalign.ipa import collect as ipa_collect
from visalign.ipa import pairs as ipa_pairs
from visalign.ipa.collect import PENDING_FILE, REVISED
from visalign.ipa.verify import EndpointVerifier
from visalign.recipes import SampleParams
from visalign.schema import Response
from visalign.stages import sample
from visalign.stages.rollout import CLEAN, HFEngine, open_images

VIEWS = [CLEAN, "noise", "blur", "scale"]


def _recipe(**overrides):
    base = {"rollout.max_new_tokens": 3, "ipa.feedback_max_new_tokens": 3, "rollout.checkpoint_every": 2,
            "rollout.num_samples": 1, "rollout.do_sample": False}
    return recipes.load("ipa", "toy", {**base, **overrides})


@pytest.fixture
def prompts_dir(llava_seeds, tmp_path):
    d = tmp_path / "prompts"
    sample.run(sources=[str(llava_seeds)], output_dir=str(d), params=SampleParams(num_prompts=4, strip_suffixes=()))
    return d


class Recording(HFEngine):
    """The real engine, recording the questions it was asked."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.questions = []

    def generate(self, requests):
        self.questions += [r.question for r in requests]
        return super().generate(requests)


@pytest.fixture
def engines(tiny_model):
    from visalign.models import load_model

    loaded = load_model(str(tiny_model))
    return (Recording(loaded.model, loaded.processor, batch_size=16, max_new_tokens=3),
            Recording(loaded.model, loaded.processor, batch_size=16, max_new_tokens=3))


def test_perturbed_views_differ_from_the_clean_image_and_replay(prompts_dir):
    prompt = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)[0]
    images = open_images(prompts_dir, prompt.images)
    params = _recipe().ipa
    reqs = ipa_collect.sample_requests(prompt, images, params)
    assert [r.id for r in reqs] == [f"{v}#0" for v in VIEWS]
    clean, noise, blur, scale = reqs
    assert noise.images == clean.images and noise.pixel_transform is not None
    assert blur.images[0].size == scale.images[0].size == clean.images[0].size
    assert blur.images[0].tobytes() != clean.images[0].tobytes() != scale.images[0].tobytes()
    import torch

    pv = torch.zeros(1, 3, 64, 64)
    again = ipa_collect.sample_requests(prompt, images, params)[1]
    assert noise.pixel_transform(pv).equal(again.pixel_transform(pv)) and not noise.pixel_transform(pv).equal(pv)


def test_round_one_samples_revises_and_resumes(prompts_dir, engines, tmp_path):
    out = tmp_path / "r1"
    recipe = _recipe()
    report = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(out), recipe=recipe,
                             round_index=1, engines=engines)
    rows = schema.read_rows(out / schema.RESPONSES_FILE)
    assert report.rows_in == 4 and len(rows) == 4 * 8  # 4 samples + 4 revisions per seed
    assert report.extra["candidates_by_view"] == {v: 4 for v in VIEWS + [REVISED + v for v in VIEWS]}
    revised = [r for r in rows if r.view.startswith(REVISED)]
    assert all(r.meta["round"] == 1 and "feedback" in r.meta and r.meta["reference_guided"] is False for r in revised)
    by_id = {r.id: r for r in rows}
    assert all(by_id[r.meta["revised_from"]].prompt_id == r.prompt_id for r in revised)
    # round 1 of 3: plain feedback (no reference in the reviser's prompts)
    policy, reviser = engines
    assert len(policy.questions) == 16 and len(reviser.questions) == 32
    assert not any("Reference:" in q for q in reviser.questions)
    # interrupted after the first chunk (2 prompts) plus a torn line: the re-run redoes the rest only
    lines = (out / schema.RESPONSES_FILE).read_text().splitlines()
    (out / schema.RESPONSES_FILE).write_text("\n".join(lines[:16]) + "\n" + lines[16][:30])
    again = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(out), recipe=recipe,
                            round_index=1, engines=engines)
    assert again.extra["resumed_prompts"] == 2
    assert {r.id: r.text for r in schema.read_rows(out / schema.RESPONSES_FILE)} == {r.id: r.text for r in rows}
    # killed mid-append: the third prompt has 4 of its 8 rows; it is done again, not taken as done
    lines = (out / schema.RESPONSES_FILE).read_text().splitlines()
    (out / schema.RESPONSES_FILE).write_text("\n".join(lines[:20]) + "\n")
    third = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(out), recipe=recipe,
                            round_index=1, engines=engines)
    assert third.extra["resumed_prompts"] == 2 and third.extra["partial_prompts_redone"] == 1
    resumed = schema.read_rows(out / schema.RESPONSES_FILE)
    assert len(resumed) == 32 and {r.id: r.text for r in resumed} == {r.id: r.text for r in rows}


def test_normal_sampling_draws_several_samples_per_view(prompts_dir, tiny_model, tmp_path):
    """rollout.num_samples with rollout.do_sample (rollout's seeded sampling): N samples of every
    view, each revised; the same seed gives the same samples."""
    recipe = _recipe(**{"rollout.num_samples": 2, "rollout.do_sample": True, "rollout.temperature": 1.5,
                        "ipa.perturbations": "blur"})
    runs = []
    for name in ("a", "b"):
        engines = ipa_collect.build_engines(str(tiny_model), recipe)
        ipa_collect.run(prompts_dir=str(prompts_dir), model=str(tiny_model), output_dir=str(tmp_path / name),
                        recipe=recipe, round_index=1, engines=engines)
        runs.append(schema.read_rows(tmp_path / name / schema.RESPONSES_FILE))
    rows = runs[0]
    assert len(rows) == 4 * 2 * 2 * 2  # prompts x views x samples x (sample + revision)
    assert sorted({(r.view, r.sample_index) for r in rows}) == sorted(
        (v, k) for v in (CLEAN, "blur", REVISED + CLEAN, REVISED + "blur") for k in (0, 1))
    assert len({r.id for r in rows}) == len(rows)
    assert [r.text for r in runs[0]] == [r.text for r in runs[1]]  # seeded
    samples = [r for r in rows if r.view == CLEAN]
    assert len({r.text for r in samples}) > 1  # sampled, not greedy


def test_last_round_works_on_pending_seeds_with_reference_guided_feedback(prompts_dir, engines, tmp_path):
    prompts = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    state = tmp_path / "state"
    state.mkdir()
    schema.write_rows(state / PENDING_FILE, [{"prompt_id": prompts[1].id}, {"prompt_id": "not-a-prompt"}])
    report = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "r2"),
                             recipe=_recipe(**{"ipa.rounds": 2}), round_index=2, state_dir=str(state), engines=engines)
    rows = schema.read_rows(tmp_path / "r2" / schema.RESPONSES_FILE)
    assert report.extra["reference_guided"] is True and report.extra["pending_in"] == 2 and report.rows_in == 1
    assert report.dropped == {"unknown_pending_id": 1} and "not-a-prompt" in report.examples["unknown_pending_id"][0]
    assert report.extra["notes"] == []
    assert {r.prompt_id for r in rows} == {prompts[1].id}
    feedback_prompts = [q for q in engines[1].questions if q.rstrip().endswith("Feedback:")]
    assert len(feedback_prompts) == 4
    assert all(f"Reference: {prompts[1].reference}" in q for q in feedback_prompts)


def test_a_later_round_with_nothing_pending_is_an_empty_round_not_a_failure(prompts_dir, engines, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / PENDING_FILE).write_text("")  # round 1 paired every seed
    report = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "r2"),
                             recipe=_recipe(**{"ipa.rounds": 2}), round_index=2, state_dir=str(state), engines=engines)
    assert report.rows_in == report.rows_out == 0 and engines[0].questions == []
    # Round 1 with no usable seed is a failure, not an empty round.
    rows = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    schema.write_rows(tmp_path / "noref" / schema.PROMPTS_FILE, [dataclasses.replace(r, reference=None) for r in rows])
    with pytest.raises(EmptyResult, match=f"{len(rows)} no_reference"):
        ipa_collect.run(prompts_dir=str(tmp_path / "noref"), model="unused", output_dir=str(tmp_path / "r1"),
                        recipe=_recipe(), round_index=1, engines=engines)


def test_seeds_without_reference_are_counted_and_bad_rounds_refused(prompts_dir, engines, tmp_path):
    rows = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    rows[0].reference = None
    schema.write_rows(prompts_dir / schema.PROMPTS_FILE, rows)
    report = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "o"),
                             recipe=_recipe(**{"ipa.revise": False, "ipa.perturbations": ""}), round_index=1,
                             engines=engines)
    assert report.dropped == {"no_reference": 1} and report.rows_out == 3
    with pytest.raises(ValueError, match="round_index=3"):
        ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "x"),
                        recipe=_recipe(**{"ipa.rounds": 2}), round_index=3, engines=engines)
    with pytest.raises(InputError, match="pending.jsonl: not found"):
        ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "y"),
                        recipe=_recipe(), round_index=2, state_dir=str(tmp_path), engines=engines)


def test_several_rounds_without_revision_are_noted_and_get_no_reference(prompts_dir, engines, tmp_path, caplog):
    prompts = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    state = tmp_path / "state"
    state.mkdir()
    schema.write_rows(state / PENDING_FILE, [{"prompt_id": prompts[0].id}])
    with caplog.at_level("WARNING", logger="visalign.ipa.collect"):
        report = ipa_collect.run(prompts_dir=str(prompts_dir), model="unused", output_dir=str(tmp_path / "r2"),
                                 recipe=_recipe(**{"ipa.rounds": 2, "ipa.revise": False, "ipa.perturbations": ""}),
                                 round_index=2, state_dir=str(state), engines=engines)
    assert report.extra["reference_guided"] is False and len(report.extra["notes"]) == 1
    assert "ipa.revise=False" in report.extra["notes"][0] and "ipa.revise=False" in caplog.text
    assert json.loads((tmp_path / "r2" / "report.json").read_text())["notes"] == report.extra["notes"]
    assert not any("Reference:" in q for e in engines for q in e.questions)


# ---- verification and pairs -------------------------------------------------------------------

def _candidates(prompts_dir, out, round_index, texts_per_prompt):
    """A round's candidates written by hand: texts_per_prompt[i] are prompt i's responses."""
    prompts = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    rows = []
    for p, texts in zip(prompts, texts_per_prompt, strict=False):
        for k, text in enumerate(texts):
            view = VIEWS[k % 4] if k < 4 else REVISED + VIEWS[k % 4]
            rows.append(Response(id=schema.stable_id(p.id, view, round_index), prompt_id=p.id, view=view, text=text,
                                 num_tokens=1, finish_reason="eos", meta={"round": round_index}))
    schema.write_rows(out / schema.RESPONSES_FILE, rows)
    return prompts


@pytest.fixture
def judge():
    server = StandInEndpoint()  # judges by comparing the response with the reference
    yield server
    server.close()


def test_pairs_from_verified_vs_rejected_then_merged_across_rounds(prompts_dir, judge, tmp_path):
    recipe = _recipe(**{"ipa.max_pairs_per_prompt": 2})
    c1 = tmp_path / "c1"
    c1.mkdir()
    prompts = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)
    refs = [p.reference for p in prompts]
    # seed 0: right + two wrong answers; seed 1: only wrong; seed 2: only right; seed 3: right + wrong
    _candidates(prompts_dir, c1, 1, [[refs[0], "purple", "seven"], ["purple", "seven"], [refs[2], refs[2]],
                                     [refs[3], "seven"]])
    verifier = EndpointVerifier(judge.url, "judge", None, recipe.verify)
    r1 = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(tmp_path / "p1"),
                       recipe=recipe, round_index=1, verifier=verifier)
    pairs = schema.read_rows(tmp_path / "p1" / schema.PAIRS_FILE)
    assert [(p.prompt_id, p.chosen) for p in pairs].count((prompts[0].id, refs[0])) == 2
    assert {p.prompt_id for p in pairs} == {prompts[0].id, prompts[3].id} and len(pairs) == 3
    pv = pairs[0].provenance
    assert pv["chosen_verdict"]["status"] == "verified" and pv["rejected_verdict"]["status"] == "rejected"
    assert pv["rejected_verdict"]["criteria"]["entails"] is False and pv["chosen_verdict"]["reason"] == "compared"
    judged_by = {"backend": "endpoint", "model": "judge", "url": judge.url + "/chat/completions"}
    assert all(p.provenance["verifier"] == judged_by for p in pairs)
    assert r1.extra["combinations"] == {"paired": 3, "over_cap": 0, "equal_text": 0, "duplicate_text": 0}
    assert all((tmp_path / "p1" / im).exists() for p in pairs for im in p.images)
    pending = [json.loads(x)["prompt_id"] for x in (tmp_path / "p1" / PENDING_FILE).read_text().splitlines()]
    assert pending == sorted([prompts[1].id, prompts[2].id])
    assert r1.dropped == {"no_verified": 1, "no_rejected": 1}
    (round1,) = json.loads((tmp_path / "p1" / ipa_pairs.ROUNDS_FILE).read_text())
    assert round1["verified_rate"] == round(4 / 9, 4) and round1["new_pairs"] == 3 and round1["pending_after"] == 2
    assert round1["verifier"] == judged_by and round1["error_reasons"] == {}

    # round 2 on the pending seeds: seed 1 now gets a right answer; pairs so far are kept
    c2 = tmp_path / "c2"
    c2.mkdir()
    rows = [Response(id=schema.stable_id(prompts[1].id, v, 2), prompt_id=prompts[1].id, view=v, text=t, num_tokens=1,
                     finish_reason="eos", meta={"round": 2}) for v, t in ((CLEAN, refs[1]), ("blur", "purple"))]
    schema.write_rows(c2 / schema.RESPONSES_FILE, rows)
    r2 = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c2), output_dir=str(tmp_path / "p2"),
                       recipe=recipe, round_index=2, verifier=verifier, state_dir=str(tmp_path / "p1"))
    merged = schema.read_rows(tmp_path / "p2" / schema.PAIRS_FILE)
    assert [p.id for p in merged[:3]] == [p.id for p in pairs] and len(merged) == 4
    assert merged[3].provenance["round"] == 2
    rounds = json.loads((tmp_path / "p2" / ipa_pairs.ROUNDS_FILE).read_text())
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["verified_rate"] == 0.5
    assert r2.extra["pending_after"] == 0


def test_merge_deduplicates_by_content():
    from visalign.schema import Pair

    a = Pair(id="x", images=[], prompt="q", chosen="a", rejected="b", prompt_id="p")
    b = Pair(id="y", images=[], prompt="q", chosen="a", rejected="c", prompt_id="p")
    merged, dups = ipa_pairs.merge_pairs([a], [a, b])
    assert [p.id for p in merged] == ["x", "y"] and dups == 1


def test_a_failing_endpoint_leaves_every_seed_pending_and_nothing_crashes(prompts_dir, tmp_path):
    server = StandInEndpoint(default="500")
    try:
        recipe = _recipe(**{"verify.endpoint_retries": 1, "verify.endpoint_backoff_s": 0.0,
                            "verify.max_error_share": 1.0})  # go on whatever the errors
        c1 = tmp_path / "c1"
        c1.mkdir()
        prompts = _candidates(prompts_dir, c1, 1, [[p.reference, "purple"] for p in
                                                   schema.read_rows(prompts_dir / schema.PROMPTS_FILE)])
        with open(c1 / schema.RESPONSES_FILE, "a") as f:  # corrupt rows are skipped and counted
            f.write('{"id": "broken"\n{"id": "x", "prompt_id": "nope", "view": "clean"}\n')
        report = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(tmp_path / "p"),
                               recipe=recipe, round_index=1,
                               verifier=EndpointVerifier(server.url, "m", None, recipe.verify))
    finally:
        server.close()
    assert report.rows_out == 0 and report.extra["verified_rate"] == 0.0
    assert report.extra["rounds"][0]["verdicts"] == {"error": 8}
    assert report.extra["rounds"][0]["error_reasons"] == {"retries_exhausted": 8}
    assert report.extra["endpoint"]["http_500"] == 16
    assert report.dropped["corrupt_row"] == 2 and "row 9" in report.examples["corrupt_row"][0]
    assert report.extra["pending_after"] == len(prompts)


def test_toy_verification_examples_teach_verdicts_the_parser_reads():
    """The IPA demo's base model learns verdicts from ground truth: right answer -> all yes, a wrong
    answer of the asked kind -> follows only, an answer of another kind -> all no."""
    import random
    import re

    from visalign.ipa.verify import parse_verdict
    from visalign.toyworld.ipa_sft import _format_examples, answer_kind

    entry = {"conversations": [{"value": "<image>\nWhat colour is the circle?"}, {"value": "red"}]}
    rng, seen = random.Random(0), set()
    for _ in range(40):
        examples = _format_examples(entry, rng)
        prompt, target = examples[0]
        response = re.search(r"Response: (.*)", prompt).group(1)
        criteria, _ = parse_verdict(target)
        assert criteria["entails"] == criteria["complete"] == criteria["consistent"] == (response == "red")
        assert criteria["follows"] == (answer_kind(response) == "colour")
        seen.add((response == "red", answer_kind(response) == "colour"))
        assert all(t == "red" for _, t in examples[1:])  # feedback / refinement targets: the right answer
    assert seen == {(True, True), (False, True), (False, False)}
    mc = {"conversations": [{"value": "<image>\nWhich?\nA. x\nB. y"}, {"value": "B"}]}
    assert _format_examples(mc, rng) == []


def test_verification_resumes_from_its_checkpoint(prompts_dir, judge, tmp_path):
    recipe = _recipe(**{"verify.batch_size": 1})  # checkpoints every 4 verdicts
    c1 = tmp_path / "c1"
    c1.mkdir()
    refs = [p.reference for p in schema.read_rows(prompts_dir / schema.PROMPTS_FILE)]
    _candidates(prompts_dir, c1, 1, [[r, "purple"] for r in refs])
    out = tmp_path / "p"
    verifier = EndpointVerifier(judge.url, "judge", None, recipe.verify)
    first = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(out), recipe=recipe,
                          round_index=1, verifier=verifier)
    assert len(judge.requests) == 8
    lines = (out / ipa_pairs.VERDICTS_FILE).read_text().splitlines()
    (out / ipa_pairs.VERDICTS_FILE).write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])  # killed mid-write
    again = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(out), recipe=recipe,
                          round_index=1, verifier=verifier)
    assert len(judge.requests) == 12  # only the 4 verdicts not checkpointed were asked again
    assert again.extra["rounds"] == first.extra["rounds"]
    assert (out / schema.PAIRS_FILE).read_text() and again.rows_out == first.rows_out == 4


def _judged(prompt_id, items):
    """(Response, Verdict) pairs written by hand: items are (text, status)."""
    from visalign.ipa.verify import Verdict

    return [(Response(id=f"{prompt_id}-{k}", prompt_id=prompt_id, view=CLEAN, text=t, num_tokens=1,
                      finish_reason="eos"), Verdict(status)) for k, (t, status) in enumerate(items)]


def test_make_pairs_counts_every_combination_it_leaves_out(prompts_dir):
    import random

    from visalign.report import StageReport

    prompt = schema.read_rows(prompts_dir / schema.PROMPTS_FILE)[0]
    recipe = _recipe(**{"ipa.max_pairs_per_prompt": 1})
    judged = _judged(prompt.id, [("red", "verified"), ("red", "verified"), ("red</s>", "rejected"),
                                 ("blue", "rejected"), ("seven", "rejected"), ("</s>", "rejected"),
                                 ("", "verified"), ("green", "error")])
    report, combos = StageReport("t"), Counter()
    pairs = ipa_pairs.make_pairs(prompt, judged, recipe, random.Random(0), report, combos,
                                 {"backend": "local", "model": "m"})
    # chosen: red, red; rejected: red (once cleaned), blue, seven; 2 empty texts; the error is on no side
    assert report.dropped == {"empty_after_clean": 2}
    assert combos == {"equal_text": 2, "duplicate_text": 2, "paired": 1, "over_cap": 1}
    assert len(pairs) == 1 and pairs[0].provenance["verifier"] == {"backend": "local", "model": "m"}


def _four_seeds(prompts_dir, tmp_path):
    c1 = tmp_path / "c1"
    c1.mkdir()
    refs = [p.reference for p in schema.read_rows(prompts_dir / schema.PROMPTS_FILE)]
    _candidates(prompts_dir, c1, 1, [[r, "purple"] for r in refs])
    return c1


def test_a_down_endpoint_trips_the_breaker_and_fails_the_step_clearly(prompts_dir, tmp_path):
    server = StandInEndpoint(default="500")
    try:
        recipe = _recipe(**{"verify.endpoint_retries": 1, "verify.endpoint_backoff_s": 0.0,
                            "verify.max_consecutive_errors": 2, "verify.endpoint_concurrency": 1})
        verifier = EndpointVerifier(server.url, "judge-7b", "sk-secret", recipe.verify)
        with pytest.raises(ipa_pairs.VerifierOutage, match="verify.max_error_share=0.5") as e:
            ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(_four_seeds(prompts_dir, tmp_path)),
                          output_dir=str(tmp_path / "p"), recipe=recipe, round_index=1, verifier=verifier)
    finally:
        server.close()
    assert len(server.requests) == 2 * 2  # 2 items x 2 tries, then the other 6 are not asked
    msg = str(e.value)
    assert "8 of 8 verdicts" in msg and server.url in msg and "judge-7b" in msg and "sk-secret" not in msg
    assert "skipped_after_outage': 6" in msg and "VISALIGN_VERIFIER_URL" in msg
    report = json.loads((tmp_path / "p" / "report.json").read_text())
    assert report["error_reasons"] == {"retries_exhausted": 2, "skipped_after_outage": 6} and report["failed"] == msg
    assert not (tmp_path / "p" / ipa_pairs.VERDICTS_FILE).read_text()  # errors are not checkpointed
    assert not (tmp_path / "p" / schema.PAIRS_FILE).exists()


def test_errors_below_the_share_go_on_and_are_asked_again_on_resume(prompts_dir, tmp_path):
    server = StandInEndpoint(script=["500", "500"])  # the first two items fail, the rest are judged
    try:
        # One request in flight: with more, "the first two requests" can be any two items (one seed's
        # two candidates leave 3 pairs, two seeds' leave 2), which made this test flaky.
        recipe = _recipe(**{"verify.endpoint_retries": 0, "verify.batch_size": 1, "verify.endpoint_concurrency": 1})
        verifier = EndpointVerifier(server.url, "judge", None, recipe.verify)
        c1, out = _four_seeds(prompts_dir, tmp_path), tmp_path / "p"
        first = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(out),
                              recipe=recipe, round_index=1, verifier=verifier)
        assert first.extra["rounds"][0]["verdicts"]["error"] == 2 and first.rows_out == 3  # 2/8 <= 0.5: go on
        kept = [json.loads(x) for x in (out / ipa_pairs.VERDICTS_FILE).read_text().splitlines()]
        assert len(kept) == 6 and all(r["verdict"]["status"] != "error" for r in kept)
        again = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(out),
                              recipe=recipe, round_index=1, verifier=verifier)
    finally:
        server.close()
    assert len(server.requests) == 8 + 2  # the resumed step asked only the two failed items
    assert "error" not in again.extra["rounds"][0]["verdicts"] and again.rows_out == 4


def test_a_round_without_candidates_does_not_load_the_local_verifier(prompts_dir, tmp_path):
    c1 = tmp_path / "c1"
    c1.mkdir()
    (c1 / schema.RESPONSES_FILE).write_text("")
    recipe = _recipe()
    verifier = ipa_pairs.build_verifier(recipe, str(tmp_path / "no-such-model"))  # loading it would fail
    report = ipa_pairs.run(prompts_dir=str(prompts_dir), candidates_dir=str(c1), output_dir=str(tmp_path / "p"),
                           recipe=recipe, round_index=1, verifier=verifier)
    assert report.rows_in == report.rows_out == 0
    assert report.extra["verifier"] == {"backend": "local", "model": str(tmp_path / "no-such-model")}
