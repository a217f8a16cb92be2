"""The evaluate stage: reference metrics on hand-worked numbers, TSV reading, and run() end to end."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from visalign import schema
from visalign.recipes import EvaluateParams
from visalign.report import StageReport, read_report
from visalign.schema import Prediction
from visalign.stages import benchmarks, evaluate
from visalign.stages.benchmarks import BenchRow
from visalign.stages.metrics import benchmark_metrics, normalize_answer, pope_metrics
from visalign.stages.rollout import GenerationResult

COLOURS = ["red", "green", "blue", "yellow"]


def b64_png(colour: str, size: int = 32) -> str:
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((4, 4, 24, 24), fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", quoting=csv.QUOTE_ALL)
        writer.writeheader()
        writer.writerows(rows)
    return path


def pope_tsv(path: Path) -> Path:
    rows = [{"index": i, "image": b64_png(COLOURS[i % 4]), "question": f"Is there a {COLOURS[(i + 1) % 4]} circle?",
             "answer": "yes" if i % 2 else "no", "category": ["random", "popular", "adversarial"][i % 3]}
            for i in range(6)]
    return write_tsv(path, rows)


def mc_tsv(path: Path) -> Path:
    rows = [{"index": i, "image": b64_png(c), "question": "What colour is the circle?", "answer": "ABCD"[i],
             "category": "colour", "A": "red", "B": "green", "C": "blue", "D": "yellow"}
            for i, c in enumerate(COLOURS)]
    return write_tsv(path, rows)


def short_tsv(path: Path) -> Path:
    rows = [{"index": i, "image": b64_png(c), "question": "What colour is the circle?", "answer": c}
            for i, c in enumerate(COLOURS[:3])]
    return write_tsv(path, rows)


def pred(extracted, answer, correct=False, category=None) -> Prediction:
    return Prediction(index="0", question="q", answer=answer, prediction=str(extracted), extracted=extracted,
                      correct=correct, category=category)


# ---- metrics ----------------------------------------------------------------------------------

def test_pope_metrics_on_a_hand_worked_confusion_matrix():
    # TP=3, FP=1, TN=4, FN=2 (10 questions, 4 read yes)
    read = ["Yes"] * 3 + ["Yes"] + ["No"] * 4 + ["No"] * 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["yes"] * 2
    m = pope_metrics(read, labels)
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)  # 0.6667
    assert m["yes_ratio"] == pytest.approx(0.4) and m["unknown"] == 0


def test_pope_metrics_never_divides_by_zero():
    m = pope_metrics(["No", "No"], ["yes", "no"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    with pytest.raises(ValueError, match="non-empty"):
        pope_metrics([], [])


@pytest.mark.parametrize("text", ["", "I don't know", "Nope", "The image is blurry.", "yes and no"])
def test_an_unreadable_yes_no_answer_is_never_a_yes(text):
    """The broken model that prints nothing gets recall 0, not 1 (VLMEvalKit's Unknown)."""
    row = BenchRow(index="1", images=[], question="Is there a dog?", answer="yes")
    read, correct = evaluate.SCORERS[evaluate.YES_NO](text, row)
    assert (read, correct) == ("Unknown", False)
    m = benchmark_metrics(evaluate.YES_NO, [pred(read, "yes"), pred(read, "no")])
    assert (m["recall"], m["accuracy"], m["yes_ratio"], m["unknown"]) == (0.0, 0.0, 0.0, 2.0)


@pytest.mark.parametrize("text, read", [("NO.", "No"), ("No!", "No"), ("YES, there is.", "Yes"), ("no", "No")])
def test_yes_no_reading_ignores_case_and_punctuation(text, read):
    assert evaluate.SCORERS[evaluate.YES_NO](text, BenchRow(index="1", images=[], question="q", answer="no"))[0] == read


def test_yes_no_headline_is_the_mean_over_splits_and_pooled_is_kept():
    """Splits of different sizes: the mean over splits differs from the pooled figure."""
    preds = ([pred("Yes", "yes", category="random")] * 3 + [pred("No", "yes", category="random")]
             + [pred("Yes", "no", category="adversarial"), pred("No", "no", category="adversarial")])
    m = benchmark_metrics(evaluate.YES_NO, preds, split_mean=True)
    assert m["random/f1"] == pytest.approx(2 * 1.0 * 0.75 / 1.75) and m["adversarial/f1"] == 0.0
    assert m["f1"] == pytest.approx((m["random/f1"] + m["adversarial/f1"]) / 2)
    assert m["accuracy"] == pytest.approx((0.75 + 0.5) / 2) and m["pooled/accuracy"] == pytest.approx(4 / 6)
    assert m["pooled/f1"] == pytest.approx(2 * 0.75 * 0.75 / 1.5) and m["n"] == 6
    # VLMEvalKit explodes "a,b" categories: a row counts in both splits
    both = benchmark_metrics(evaluate.YES_NO, [pred("Yes", "yes", category="random,popular")], split_mean=True)
    assert both["random/recall"] == both["popular/recall"] == 1.0 and both["pooled/accuracy"] == 1.0


def test_without_splits_the_pooled_figures_are_the_headline():
    m = benchmark_metrics(evaluate.YES_NO, [pred("Yes", "yes"), pred("No", "yes")], split_mean=True)
    assert m["recall"] == 0.5 and not any(k.startswith("pooled/") for k in m)


def test_other_yes_no_benchmarks_report_pooled_figures_and_categories():
    """VLMEvalKit's default_rating: the overall accuracy is over all rows, not a mean of categories."""
    preds = [pred("Yes", "yes", category="a")] * 9 + [pred("No", "yes", category="a"), pred("No", "yes", category="b")]
    m = benchmark_metrics(evaluate.YES_NO, preds)
    assert m["accuracy"] == pytest.approx(9 / 11) and m["a/accuracy"] == 0.9 and m["b/accuracy"] == 0.0
    assert not any(k.startswith("pooled/") for k in m)
    pope = evaluate.Benchmark("POPE", "x", evaluate.YES_NO, [], 0)
    assert evaluate.is_pope(pope) and not evaluate.is_pope(evaluate.Benchmark("MME", "x", evaluate.YES_NO, [], 0))


OPTIONS = {"A": "dog", "B": "cat", "C": "red circle"}


def test_multiple_choice_reads_option_a_like_any_other_letter():
    """'The answer is A.' was no answer while 'The answer is B.' was B: scores were biased against A."""
    row = BenchRow(index="1", images=[], question="q", answer="A", options=OPTIONS)
    assert evaluate.SCORERS[evaluate.MULTIPLE_CHOICE]("The answer is A.", row) == ("A", True)
    assert evaluate.SCORERS[evaluate.MULTIPLE_CHOICE]("The answer is B.", row) == ("B", False)


def test_multiple_choice_metrics_count_unextractable_and_refusals_as_wrong():
    row = BenchRow(index="1", images=[], question="q", answer="B", options=OPTIONS)
    scored = [evaluate.SCORERS[evaluate.MULTIPLE_CHOICE](t, row)
              for t in ("B", "cat", "A", "A or B", "Cannot determine the answer")]
    assert scored == [("B", True), ("B", True), ("A", False), (None, False), ("Z", False)]
    preds = [pred(e, "B", c) for e, c in scored]
    assert benchmark_metrics(evaluate.MULTIPLE_CHOICE, preds) == {
        "accuracy": 0.4, "unextractable": 1.0, "refused": 1.0, "n": 5.0}


def test_circular_eval_needs_every_rotation_right():
    """MMBench's rule: rows index, index + 1e6, ... are one question with rotated options."""
    def p(index, extracted, category="cp"):
        return Prediction(index=str(index), question="q", answer="", prediction="", extracted=extracted,
                          correct=False, category=category)
    preds = [p(1, "A"), p(1_000_001, "B"), p(2, "C"), p(1_000_002, "C"), p(3, None, "fp"), p(1_000_003, "A", "fp")]
    golds = {"1": "A", "1000001": "B", "2": "C", "1000002": "D", "3": "A", "1000003": "A"}
    m = benchmark_metrics(evaluate.MULTIPLE_CHOICE, preds, circular_golds=golds)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["groups"] == 3 and m["n"] == 6
    assert m["cp/accuracy"] == 0.5 and m["fp/accuracy"] == 0.0 and m["unextractable"] == 1


def test_circular_follows_vlmevalkit_names_unless_set():
    bench = evaluate.Benchmark("MMBench_DEV_EN", "x", evaluate.MULTIPLE_CHOICE, [], 0)
    assert evaluate.is_circular(bench, "auto") and not evaluate.is_circular(bench, "off")
    other = evaluate.Benchmark("MMStar", "x", evaluate.MULTIPLE_CHOICE, [], 0)
    assert not evaluate.is_circular(other, "auto") and evaluate.is_circular(other, "on")


@pytest.mark.parametrize("text, norm", [
    ("The Red Circle.", "red circle"), ("an apple!", "apple"), ("  Blue  ", "blue"), ("3", "3"),
    ("A", ""), ("it's", "its"),
])
def test_short_answer_normalisation(text, norm):
    assert normalize_answer(text) == norm


def test_short_answer_scoring_is_exact_match_after_normalisation():
    row = BenchRow(index="1", images=[], question="q", answer="red circle")
    score = evaluate.SCORERS[benchmarks.SHORT]
    assert score("The red circle.", row) == ("red circle", True)
    assert score("a red circle on white", row)[1] is False


# ---- reading TSVs -----------------------------------------------------------------------------

def test_reads_multi_image_rows_image_refs_and_counts_malformed_rows(tmp_path):
    two = [b64_png("red"), b64_png("blue")]
    rows = [
        {"index": 1, "image": b64_png("red"), "question": "Is it red?", "answer": "yes", "category": "random"},
        {"index": 2, "image": json.dumps(two), "question": "Same colour?", "answer": "no"},  # JSON list
        {"index": 3, "image": str(two), "question": "Same?", "answer": "no"},  # Python list (VLMEvalKit)
        {"index": 4, "image": "1", "question": "Is it blue?", "answer": "no"},  # refers to row 1's image
        {"index": 5, "image": "!!not base64!!" * 10, "question": "Q?", "answer": "yes"},
        {"index": 6, "image": b64_png("red"), "question": "", "answer": "yes"},
        {"index": 7, "image": base64.b64encode(b"\x89PNG\r\n\x1a\n truncated" * 8).decode(), "question": "Q?",
         "answer": "no"},
    ]
    path = write_tsv(tmp_path / "my_pope.tsv", rows)
    report = StageReport("evaluate")
    bench = evaluate.read_benchmark(str(path), report)
    assert (bench.name, bench.task, bench.rows_read) == ("my_pope", evaluate.YES_NO, 7)
    assert [r.index for r in bench.rows] == ["1", "2", "3", "4"]
    assert [len(r.images) for r in bench.rows] == [1, 2, 2, 1]
    assert bench.rows[3].images == bench.rows[0].images
    assert bench.rows[0].category == "random" and bench.rows[1].category is None
    assert dict(report.dropped) == {"bad_image": 2, "missing_field": 1}
    details = report.examples["bad_image"] + report.examples["missing_field"]
    assert any(f"{path}: row 6 (index 5): field 'image'" in d for d in details)
    assert any(f"{path}: row 7 (index 6): field 'question'" in d for d in details)
    assert any("row 8 (index 7): field 'image'" in d for d in details)
    assert len(evaluate.read_benchmark(str(path), StageReport("e"), limit=2).rows) == 2


def test_task_type_follows_from_columns_and_answers(tmp_path):
    assert evaluate.read_benchmark(str(mc_tsv(tmp_path / "mc.tsv")), StageReport("e")).task == evaluate.MULTIPLE_CHOICE
    assert evaluate.read_benchmark(str(pope_tsv(tmp_path / "p.tsv")), StageReport("e")).task == evaluate.YES_NO
    assert evaluate.read_benchmark(str(short_tsv(tmp_path / "s.tsv")), StageReport("e")).task == benchmarks.SHORT


def test_prompts_follow_the_llava_templates(tmp_path):
    mc = evaluate.read_benchmark(str(mc_tsv(tmp_path / "mc.tsv")), StageReport("e"))
    assert evaluate.build_question(mc.rows[0], mc.task) == (
        "What colour is the circle?\nA. red\nB. green\nC. blue\nD. yellow\n"
        "Answer with the option's letter from the given choices directly.")
    row = BenchRow(index="1", images=[], question="Is there a dog?", answer="no")
    assert evaluate.build_question(row, evaluate.YES_NO) == (
        "Is there a dog?\nAnswer the question using a single word or phrase.")


def test_find_benchmarks_in_directories_and_refuses_duplicate_names(tmp_path):
    pope_tsv(tmp_path / "b.tsv")
    mc_tsv(tmp_path / "a.tsv")
    (tmp_path / "notes.txt").write_text("not a benchmark")
    assert [Path(u).name for u in evaluate.find_benchmarks([str(tmp_path)])] == ["a.tsv", "b.tsv"]
    (tmp_path / "other").mkdir()
    pope_tsv(tmp_path / "other" / "a.tsv")
    with pytest.raises(ValueError, match="share a name"):
        evaluate.find_benchmarks([str(tmp_path), str(tmp_path / "other" / "a.tsv")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .tsv benchmark"):
        evaluate.find_benchmarks([str(tmp_path / "empty")])


# ---- the stage --------------------------------------------------------------------------------

class ScriptedEngine:
    """Answers from a table keyed by the question's first line: known answers, known metrics."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.requests = answers, []

    def generate(self, requests):
        self.requests += requests
        return [GenerationResult(id=r.id, text=self.answers.get(r.question.split("\n")[0], "yes"),
                                 num_tokens=1, finish_reason="eos") for r in requests]


def test_run_scores_with_known_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    mc_tsv(bench_dir / "toy_mc.tsv")
    short_tsv(bench_dir / "toy_short.tsv")
    engines = {"base": ScriptedEngine({"What colour is the circle?": "A"}),
               "aligned": ScriptedEngine({"What colour is the circle?": "red"})}
    report = evaluate.run(benchmarks=[str(bench_dir)], models={"base": "B", "aligned": "C"},
                          output_dir=str(tmp_path / "out"), params=EvaluateParams(batch_size=2),
                          engine_factory=lambda uri, params: engines["base" if uri == "B" else "aligned"])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # toy_mc answers are A, B, C, D: "A" is right once; "red" is option A's text, also right once.
    assert results["base"]["toy_mc"] == {"accuracy": 0.25, "unextractable": 0.0, "refused": 0.0, "n": 4.0,
                                        "colour/accuracy": 0.25, "colour/unextractable": 0.0,
                                        "colour/refused": 0.0}
    assert results["aligned"]["toy_mc"]["accuracy"] == 0.25
    assert results["aligned"]["toy_short"] == {"accuracy": pytest.approx(1 / 3), "n": 3.0}
    assert results["_meta"]["rows"] == {"toy_mc": 4, "toy_short": 3}
    assert results["_meta"]["benchmarks"]["toy_mc"]["task"] == evaluate.MULTIPLE_CHOICE
    # aligned vs base on the same rows: both right on the same toy_mc row; on toy_short only aligned is
    paired = results["_paired"]
    assert paired["reference"] == "base" and paired["samples"] == 1000
    mc = paired["models"]["aligned"]["toy_mc"]["accuracy"]
    assert mc["difference"] == 0 and mc["test"] == "mcnemar" and mc["p_value"] == 1.0
    assert (mc["right_only_reference"], mc["right_only_model"]) == (0, 0) and mc["low"] == mc["high"] == 0
    short = paired["models"]["aligned"]["toy_short"]["accuracy"]
    assert (short["right_only_reference"], short["right_only_model"]) == (0, 1) and short["p_value"] == 1.0
    assert short["difference"] == pytest.approx(1 / 3) and short["low"] == 0 and short["high"] == 1
    assert "n" not in paired["models"]["aligned"]["toy_mc"]  # counts get no interval
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "95% interval" in table and "(mcnemar)" in table
    assert len(engines["base"].requests) == 7
    assert engines["base"].requests[0].question.endswith("directly.")
    preds = schema.read_rows(tmp_path / "out" / "predictions" / "aligned" / "toy_short.jsonl", Prediction)
    assert [p.correct for p in preds] == [True, False, False]
    assert report.rows_in == report.rows_out == 7
    assert read_report(tmp_path / "out")["predictions"] == 14


@pytest.fixture(scope="module")
def adapter_model(tiny_model, tmp_path_factory) -> Path:
    """A PEFT LoRA adapter on the tiny model, saved with a card naming its base by path."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    out = tmp_path_factory.mktemp("adapter")
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])).save_pretrained(out)
    schema.write_model_card(out, schema.ModelCard(kind="adapter", base=str(tiny_model)))
    return out


def test_run_end_to_end_with_a_tiny_model_and_an_adapter(tmp_path, tiny_model, adapter_model, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    benches = [str(pope_tsv(tmp_path / "toy_pope.tsv")), str(mc_tsv(tmp_path / "toy_mc.tsv"))]
    out = tmp_path / "eval"
    report = evaluate.run(benchmarks=benches, models={"base": str(tiny_model), "aligned": str(adapter_model)},
                          output_dir=str(out), params=EvaluateParams(batch_size=4, max_new_tokens=3, limit=5))
    results = json.loads((out / "results.json").read_text())
    assert results["_meta"]["limit"] == 5 and results["_meta"]["rows"] == {"toy_pope": 5, "toy_mc": 4}
    for model in ("base", "aligned"):
        pope = results[model]["toy_pope"]
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio", "unknown", "random/f1", "pooled/f1"} <= set(pope)
        assert all(0.0 <= v <= 1.0 for k, v in pope.items() if k not in ("n", "unknown") and "/unknown" not in k)
        assert set(results[model]["toy_mc"]) >= {"accuracy", "unextractable"}
        preds = schema.read_rows(out / "predictions" / model / "toy_pope.jsonl", Prediction)
        assert len(preds) == 5 and all(p.extracted in ("Yes", "No", "Unknown") for p in preds)
    rep = read_report(out)
    assert rep["rows_in"] == 9 and rep["predictions"] == 18 and rep["questions_per_second"] > 0
    assert report.extra["models"]["aligned"] == str(adapter_model)


def test_cli_parses_models_and_recipe_flags(tmp_path, tiny_model, monkeypatch):
    from visalign.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bench = pope_tsv(tmp_path / "toy_pope.tsv")
    out = tmp_path / "cli"
    rc = main(["evaluate", "--benchmark", str(bench), "--model", f"base={tiny_model}", "--output", str(out),
               "--profile", "toy", "--limit", "2", "--max-new-tokens", "2"])
    assert rc == 0
    assert json.loads((out / "results.json").read_text())["_meta"]["rows"] == {"toy_pope": 2}
    with pytest.raises(ValueError, match="NAME=URI"):
        evaluate._parse_models(["just-a-path"])


def test_model_names_must_be_usable_as_keys(tmp_path):
    from visalign.recipes import ConfigError

    bench = pope_tsv(tmp_path / "toy_pope.tsv")
    for models in ({}, {"_meta": "x"}, {"a/b": "x"}):
        with pytest.raises(ConfigError, match="NAME=URI"):
            evaluate.run(benchmarks=[str(bench)], models=models, output_dir=str(tmp_path / "o"),
                         params=EvaluateParams(), engine_factory=lambda uri, params: ScriptedEngine({}))


def test_multiple_choice_files_with_hints_and_options_beyond_d(tmp_path):
    """ScienceQA / MMStar / SEED / AI2D shapes: a `hint` column (NaN where absent), options up to E
    that some rows leave empty, extra columns (l2-category, split) that change nothing."""
    rows = [{"index": 0, "image": b64_png("red"), "question": "Which is a mammal?", "hint": "Think of fur.",
             "A": "frog", "B": "whale", "C": "shark", "D": "", "E": "", "answer": "B", "category": "bio",
             "l2-category": "x", "split": "test"},
            {"index": 1, "image": b64_png("blue"), "question": "Pick the fifth.", "hint": "nan", "A": "1",
             "B": "2", "C": "3", "D": "4", "E": "5", "answer": "E", "category": "math", "l2-category": "y",
             "split": "test"}]
    bench = evaluate.read_benchmark(str(write_tsv(tmp_path / "ScienceQA_TEST.tsv", rows)), StageReport("e"))
    assert bench.task == evaluate.MULTIPLE_CHOICE and list(bench.rows[0].options) == ["A", "B", "C"]
    assert evaluate.build_question(bench.rows[0], bench.task) == (
        "Think of fur.\nWhich is a mammal?\nA. frog\nB. whale\nC. shark\n"
        "Answer with the option's letter from the given choices directly.")
    assert bench.rows[1].hint is None and list(bench.rows[1].options) == ["A", "B", "C", "D", "E"]
    assert evaluate.SCORERS[evaluate.MULTIPLE_CHOICE]("E", bench.rows[1]) == ("E", True)
    assert evaluate.SCORERS[evaluate.MULTIPLE_CHOICE]("5", bench.rows[1]) == ("E", True)  # the option's text
