"""Judge-scored evaluation: VLMEvalKit's MM-Vet and LLaVA-Bench prompts and score reading, the
judge cache, and evaluate.run with a judge behind a real endpoint client.

Two judges answer here: the toy world's ToyJudge (a scripted stand-in for a judge model's scores,
behind a local OpenAI-compatible HTTP endpoint) and `transformers serve` with the tiny model (a
real server whose model answers garbage: every grading fails, as a broken judge would).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from test_evaluate import ScriptedEngine, b64_png, write_tsv

from visalign import schema
from visalign.infra.endpoint import ChatEndpoint, EndpointConfig, RetryPolicy
from visalign.recipes import ConfigError, EvaluateParams
from visalign.schema import Prediction
from visalign.stages import evaluate, judge
from visalign.toyworld.judged import TOY_JUDGE_MODEL, ToyJudge, serve_toy_judge


def mmvet_tsv(path: Path) -> Path:
    rows = [{"index": 0, "image": b64_png("red"), "question": "Which shapes are there?",
             "answer": "circle<AND>square", "category": "rec"},
            {"index": 1, "image": b64_png("blue"), "question": "Where is the blue circle?", "answer": "top left",
             "category": "rec,spat"},
            {"index": 2, "image": b64_png("green"), "question": "How many shapes?", "answer": "2<OR>two",
             "category": "ocr,math"}]
    return write_tsv(path, rows)


ANSWERS = {"Which shapes are there?": "A circle and a triangle.", "Where is the blue circle?": "Top left.",
           "How many shapes?": "There are two."}


@pytest.fixture
def toy_judge():
    server, url = serve_toy_judge()
    yield url
    server.shutdown()
    server.server_close()


def _judge(url: str, cache: Path | None, **policy) -> judge.Judge:
    endpoint = ChatEndpoint(EndpointConfig(url, TOY_JUDGE_MODEL), RetryPolicy(timeout_s=30, **policy), name="judge")
    return judge.Judge(endpoint, judge.JudgeCache(cache))


# ---- prompts and reading -----------------------------------------------------------------------

def test_mmvet_prompt_is_vlmevalkits_with_the_sample_as_the_last_row():
    prompt = judge.mmvet_prompt("What is x?", "-1<AND>-5", "x = -1")
    assert prompt.startswith("\nCompare the ground truth and prediction from AI models")
    assert prompt.endswith("their actual physical characteristics. | 1.0\n\nWhat is x? | -1 <AND> -5 | x = -1 | ")


@pytest.mark.parametrize("out, score", [("0.5", 0.5), (" 1.0\n", 1.0), ("0", 0.0), ("1.1", None), ("-0.1", None),
                                        ("0.5.", None), ("The score is 0.5", None), ("", None)])
def test_mmvet_reads_a_bare_score_in_range(out, score):
    assert judge.mmvet_read(out) == score


@pytest.mark.parametrize("review, pair", [("8 6\nbecause", (8.0, 6.0)), ("8,6", (8.0, 6.0)), ("7.5 9", (7.5, 9.0)),
                                          ("8  6", (-1.0, -1.0)), ("Scores: 8 6", (-1.0, -1.0)), ("", (-1.0, -1.0))])
def test_llava_bench_reads_two_scores_on_the_first_line(review, pair):
    assert judge.llava_bench_read(review) == pair


def test_mmvet_metrics_per_capability_and_combination():
    m = judge.mmvet_metrics(["rec", "rec,spat", "ocr,math"], [0.5, 1.0, 0.0])
    assert m["score"] == pytest.approx(0.5)
    assert m["capability/rec"] == pytest.approx(0.75) and m["capability/spat"] == 1.0
    assert m["capability/ocr"] == m["capability/math"] == 0.0 and "capability/know" not in m
    assert m["category/rec_spat"] == 1.0 and m["category/ocr_math"] == 0.0


class RecordingAsker:
    """A scripted stand-in for a judge's answers: pops `script`, records each request."""

    identity = {"backend": "stand-in", "model": "scripted", "url": ""}

    def __init__(self, script):
        self.script, self.requests = list(script), []

    def ask_many(self, requests):
        self.requests += requests
        return [self.script.pop(0) for _ in requests]


def test_mmvet_asks_again_at_rising_temperature_then_scores_zero():
    asker = RecordingAsker(["garbage", "0.7", "no", "no", "no", "no", "no"])
    j = judge.Judge(asker, judge.JudgeCache(None))
    counts = Counter()
    scores = judge.mmvet_scores(j, [("q1", "a", "p"), ("q2", "b", "p")], counts)
    assert scores == [0.0, 0.7]
    assert [r.temperature for r in asker.requests] == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert counts["judge_failed"] == 1 and j.stats["calls"] == 6


# ---- evaluate with a judge ---------------------------------------------------------------------

def test_run_scores_mmvet_through_the_endpoint_and_a_rerun_pays_nothing(tmp_path, toy_judge, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench = str(mmvet_tsv(tmp_path / "toy_mmvet.tsv"))
    cache = tmp_path / "judge_cache.jsonl"
    params = EvaluateParams(judge="endpoint", judge_cache=str(cache))
    engine = ScriptedEngine(ANSWERS)
    run = evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o1"), params=params,
                       engine_factory=lambda uri, p: engine, judge=_judge(toy_judge, cache))
    m = json.loads((tmp_path / "o1" / "results.json").read_text())["base"]["toy_mmvet"]
    # circle named, square not: 0.5; "top left": 1.0; "two" is one of 2<OR>two: 1.0
    assert m["score"] == pytest.approx(2.5 / 3) and m["capability/rec"] == pytest.approx(0.75)
    assert m["category/ocr_math"] == 1.0 and m["judge_calls"] == 3 and m["judge_cache_hits"] == 0
    assert engine.requests[0].question == "Which shapes are there?"  # asked as it is: no short-answer suffix
    preds = schema.read_rows(tmp_path / "o1" / "predictions" / "base" / "toy_mmvet.jsonl", Prediction)
    assert [p.score for p in preds] == [0.5, 1.0, 1.0] and [p.correct for p in preds] == [False, True, True]
    assert run.extra["judge"] == {"calls": 3}
    meta = json.loads((tmp_path / "o1" / "results.json").read_text())["_meta"]
    assert meta["judge"]["model"] == TOY_JUDGE_MODEL and meta["judge"]["prompt_version"] == judge.PROMPT_VERSION
    assert meta["benchmarks"]["toy_mmvet"]["task"] == evaluate.MMVET
    again = evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o2"), params=params,
                         engine_factory=lambda uri, p: engine, judge=_judge(toy_judge, cache))
    assert again.extra["judge"] == {"cache_hits": 3}  # nothing asked again
    m2 = json.loads((tmp_path / "o2" / "results.json").read_text())["base"]["toy_mmvet"]
    assert m2["score"] == m["score"]


def test_judge_built_from_the_environment_and_refused_without_one(tmp_path, toy_judge, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench = str(mmvet_tsv(tmp_path / "my_mmvet.tsv"))
    with pytest.raises(ConfigError, match="judge-scored.*evaluate.judge=endpoint"):
        evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "x"),
                     params=EvaluateParams(), engine_factory=lambda uri, p: ScriptedEngine(ANSWERS))
    monkeypatch.setenv("VISALIGN_JUDGE_URL", toy_judge)
    monkeypatch.setenv("VISALIGN_JUDGE_MODEL", TOY_JUDGE_MODEL)
    report = evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "y"),
                          params=EvaluateParams(judge="endpoint"),
                          engine_factory=lambda uri, p: ScriptedEngine(ANSWERS))
    assert report.extra["judge"]["calls"] == 3
    assert len((tmp_path / "y" / evaluate.JUDGE_CACHE_FILE).read_text().splitlines()) == 3


def test_a_judge_that_gives_no_answer_fails_the_step_and_keeps_what_it_had(tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    bench = str(mmvet_tsv(tmp_path / "toy_mmvet.tsv"))
    j = judge.Judge(ChatEndpoint(EndpointConfig(dead, "j"), RetryPolicy(retries=0, max_consecutive_errors=2)),
                    judge.JudgeCache(tmp_path / "c.jsonl"))
    with pytest.raises(evaluate.JudgeOutage, match=r"gave no answer at all for 3 of 3 rows of base/toy_mmvet"):
        evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                     params=EvaluateParams(judge="endpoint"), engine_factory=lambda uri, p: ScriptedEngine(ANSWERS),
                     judge=j)
    assert (tmp_path / "o" / "predictions" / "base" / "toy_mmvet.jsonl").exists()


def test_llava_bench_relative_score_per_category(tmp_path, toy_judge, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = [{"index": i, "image": b64_png("red"), "question": q, "caption": "A red circle.", "gpt4_ans": ref,
             "category": cat} for i, (q, ref, cat) in enumerate([
                 ("Describe the image.", "red circle", "detail"), ("What is it?", "a red circle", "conv"),
                 ("Why red?", "red paint", "complex")])]
    bench = str(write_tsv(tmp_path / "LLaVABench.tsv", rows))
    answers = {"Describe the image.": "A red circle.", "What is it?": "A blue square.", "Why red?": "paint"}
    evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                 params=EvaluateParams(judge="endpoint"), engine_factory=lambda uri, p: ScriptedEngine(answers),
                 judge=_judge(toy_judge, None))
    m = json.loads((tmp_path / "o" / "results.json").read_text())["base"]["LLaVABench"]
    # stand-in: reference 10; prediction 1 + round(9 * share of the reference's words it names)
    assert m["detail/model_score"] == 1.0 and m["conv/model_score"] == pytest.approx(0.4)  # 1 + round(9 * 1/3)
    assert m["complex/model_score"] == pytest.approx(0.5)  # "paint": 1 of 2 words, 1 + round(4.5)
    assert m["relative_score"] == pytest.approx((10 + 4 + 5) / 30) and m["reference_score"] == 1.0


def test_judge_extraction_reads_what_the_rules_cannot_and_counts_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = [{"index": i, "image": b64_png("red"), "question": f"Colour {i}?", "answer": "A", "A": "red",
             "B": "green", "C": "blue"} for i in range(3)]
    bench = str(write_tsv(tmp_path / "mc.tsv", rows))
    answers = {"Colour 0?": "A", "Colour 1?": "it is crimson", "Colour 2?": "no idea at all"}
    asker = RecordingAsker(["A", "Z"])  # the judge reads row 1 as A, refuses row 2
    report = evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                          params=EvaluateParams(judge="endpoint", judge_extraction=True),
                          engine_factory=lambda uri, p: ScriptedEngine(answers),
                          judge=judge.Judge(asker, judge.JudgeCache(None)))
    m = json.loads((tmp_path / "o" / "results.json").read_text())["base"]["mc"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["judge_extracted"] == 2 and m["refused"] == 1
    assert len(asker.requests) == 2 and "it is crimson" in asker.requests[0].prompt
    assert "There are several options:" in asker.requests[0].prompt
    assert report.extra["judge"]["calls"] == 2


def test_a_broken_judge_on_a_real_server_scores_zero_and_the_cost_is_counted(tmp_path, served_tiny_model,
                                                                              monkeypatch):
    """The tiny model behind transformers serve as judge: it never writes a score, so every sample
    is asked 5 times (temperature 0, 0.5, ... 2.0) and scored 0.0; a re-run pays nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    url, model, _ = served_tiny_model
    bench = str(mmvet_tsv(tmp_path / "toy_mmvet.tsv"))
    cache = tmp_path / "cache.jsonl"

    def make():
        return judge.Judge(ChatEndpoint(EndpointConfig(url, model), RetryPolicy(timeout_s=60, concurrency=2)),
                           judge.JudgeCache(cache), max_tokens=4)
    evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                 params=EvaluateParams(judge="endpoint"), engine_factory=lambda uri, p: ScriptedEngine(ANSWERS),
                 judge=make())
    m = json.loads((tmp_path / "o" / "results.json").read_text())["base"]["toy_mmvet"]
    assert m["score"] == 0.0 and m["judge_failed"] == 3 and m["judge_calls"] == 3 * judge.MMVET_TRIES
    again = evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o2"),
                         params=EvaluateParams(judge="endpoint"),
                         engine_factory=lambda uri, p: ScriptedEngine(ANSWERS), judge=make())
    assert again.extra["judge"] == {"cache_hits": 3 * judge.MMVET_TRIES}


def test_toy_judge_grades_like_the_prompts_examples():
    assert ToyJudge().answer(judge.mmvet_prompt("What is x?", "-1<AND>-5", "x = -1")) == "0.5"
    assert ToyJudge().answer(judge.mmvet_prompt("What is x?", "-1<AND>-5", "x = -1 or x = -5")) == "1.0"
    assert ToyJudge().answer(judge.mmvet_prompt("What is x?", "-1<AND>-5", "x = 3")) == "0.0"


def test_a_judge_that_recovers_on_a_later_try_does_not_fail_the_step(tmp_path, monkeypatch):
    """No answer at the first try, a score at the second: an outage only when a row got no answer at all."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench = str(mmvet_tsv(tmp_path / "toy_mmvet.tsv"))
    asker = RecordingAsker([None, "1.0", "0.5", "0.2"])
    evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                 params=EvaluateParams(judge="endpoint"), engine_factory=lambda uri, p: ScriptedEngine(ANSWERS),
                 judge=judge.Judge(asker, judge.JudgeCache(tmp_path / "c.jsonl")))
    m = json.loads((tmp_path / "o" / "results.json").read_text())["base"]["toy_mmvet"]
    assert m["judge_unanswered"] == 0 and m["judge_no_answer"] == 1 and m["score"] == pytest.approx((0.2 + 1.0 + 0.5) / 3)
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3  # the no-answer is not cached


def test_answers_are_cached_chunk_by_chunk_and_a_rerun_asks_only_the_rest(tmp_path):
    """A run killed after the first chunk keeps that chunk's answers."""
    class Dies(RecordingAsker):
        def ask_many(self, requests):
            if len(self.requests) >= judge.Judge.CHUNK:
                raise KeyboardInterrupt  # the pod is killed
            return super().ask_many(requests)

    prompts = [f"p{i}" for i in range(judge.Judge.CHUNK + 5)]
    with pytest.raises(KeyboardInterrupt):
        judge.Judge(Dies(["0.5"] * len(prompts)), judge.JudgeCache(tmp_path / "c.jsonl")).ask(prompts)
    again = RecordingAsker(["0.5"] * 5)
    resumed = judge.Judge(again, judge.JudgeCache(tmp_path / "c.jsonl"))
    assert resumed.ask(prompts) == ["0.5"] * len(prompts)
    assert len(again.requests) == 5 and resumed.stats["cache_hits"] == judge.Judge.CHUNK


def test_extraction_retries_are_new_calls_not_cache_hits(tmp_path, monkeypatch):
    """VLMEvalKit asks a deterministic judge again up to 3 times; a cached retry would be no retry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rows = [{"index": 0, "image": b64_png("red"), "question": "Colour?", "answer": "A", "A": "red", "B": "green"}]
    bench = str(write_tsv(tmp_path / "mc.tsv", rows))
    asker = RecordingAsker(["hmm", "unsure", "B"])
    evaluate.run(benchmarks=[bench], models={"base": "B"}, output_dir=str(tmp_path / "o"),
                 params=EvaluateParams(judge="endpoint", judge_extraction=True),
                 engine_factory=lambda uri, p: ScriptedEngine({"Colour?": "crimson-ish"}),
                 judge=judge.Judge(asker, judge.JudgeCache(None)))
    m = json.loads((tmp_path / "o" / "results.json").read_text())["base"]["mc"]
    assert len(asker.requests) == 3 and m["judge_extracted"] == 1 and m["accuracy"] == 0.0
