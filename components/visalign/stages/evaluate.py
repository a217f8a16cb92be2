"""Evaluate: answer VLMEvalKit-TSV benchmarks with each model (base, aligned) and score them.

The task type of a benchmark follows from its file (visalign.stages.benchmarks reads it): option
columns (A, B, ...) make it multiple choice, answers that are all yes/no make it yes/no (POPE's
metrics), anything else is a short answer scored by exact match after normalisation. Metrics are pure functions below, written to
read answers exactly as the reference evaluators do (POPE's evaluate.py, VLMEvalKit's can_infer),
so numbers here compare with the papers' numbers.

    results.json                         {"<model>": {"<bench>": {"<metric>": value}}, "_meta": {...}}
    predictions/<model>/<bench>.jsonl    one schema.Prediction per question
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import re
import string
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.recipes import SHORT_ANSWER_SUFFIX, ConfigError, EvaluateParams
from visalign.report import StageReport, progress
from visalign.schema import Prediction
from visalign.stages.benchmarks import (
    COT,
    MULTIPLE_CHOICE,
    SHORT,
    YES_NO,
    Benchmark,
    BenchRow,
    find_benchmarks,
    read_benchmark,
)

log = logging.getLogger(__name__)

# VLMEvalKit's LLaVA prompt (vlmeval/vlm/llava/llava.py build_prompt; LLaVA's own MMBench eval).
MC_PROMPT = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
# LLaVA-1.5's short-answer suffix, used for yes/no (POPE) and short-answer questions alike.
SHORT_PROMPT = "{question}\n" + SHORT_ANSWER_SUFFIX
# A step-by-step (COT) answer is correct when visalign.stages.correctness scores it at least this.
COT_THRESHOLD = 0.9
EXPERIMENT = "visalign"


# ---- metrics: pure functions ------------------------------------------------------------------

def pope_read(text: str) -> str:
    """yes/no as POPE reads a free-text answer.

    POPE's evaluate.py (github.com/AoiDragon/POPE) and LLaVA's llava/eval/eval_pope.py: keep the
    first sentence, drop commas, split on single spaces; "No", "no" or "not" as a word -> "no",
    anything else (including an empty or unrelated answer) -> "yes". Case-sensitive on purpose.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if any(w in ("No", "not", "no") for w in words) else "yes"


def pope_metrics(predicted: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE's accuracy, precision, recall, F1 and yes-ratio; "yes" is the positive class.

    `predicted` are read answers ("yes"/"no"); a label is negative only when it is "no" (as in
    POPE). POPE divides by zero when nothing is predicted "yes"; here that precision is 0.
    """
    if len(predicted) != len(labels) or not labels:
        raise ValueError(f"pope_metrics: need equal, non-empty lists; got {len(predicted)} and {len(labels)}")
    pred = [p == "yes" for p in predicted]
    gold = [str(g).strip().lower() != "no" for g in labels]
    tp = sum(p and g for p, g in zip(pred, gold, strict=True))
    fp = sum(p and not g for p, g in zip(pred, gold, strict=True))
    tn = sum(not p and not g for p, g in zip(pred, gold, strict=True))
    fn = sum(not p and g for p, g in zip(pred, gold, strict=True))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(pred) / len(pred)}


def can_infer_option(text: str, letters: Sequence[str]) -> str | None:
    """A unique option letter standing alone in `text` (VLMEvalKit's can_infer_option).

    Brackets and punctuation become spaces, so "B", "B.", "(B)" and "Answer: B" all read as B.
    A capital "A" in a longer answer is more likely the article than option A: no answer then.
    """
    mod = text
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = mod.split()
    hits = [c for c in letters if c in splits]
    if len(hits) != 1:
        return None
    if "A" in splits and len(splits) > 3:
        return None
    return hits[0]


def can_infer_text(text: str, options: dict[str, str]) -> str | None:
    """The option whose text appears in `text`, when exactly one does (VLMEvalKit's can_infer_text)."""
    low = text.lower()
    hits = [k for k, v in options.items() if str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """Letter first, then option text (VLMEvalKit's can_infer); None when nothing unique matches."""
    return can_infer_option(text, list(options)) or can_infer_text(text, options)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and articles, collapse spaces (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


# ---- prompts and scoring ----------------------------------------------------------------------

def build_question(row: BenchRow, task: str) -> str:
    question = f"{row.hint}\n{row.question}" if row.hint else row.question
    if task == COT:
        from visalign.stages.rollout import render_question

        return render_question(question, "cot")
    if task == MULTIPLE_CHOICE:
        return MC_PROMPT.format(question=question, options="\n".join(f"{k}. {v}" for k, v in row.options.items()))
    return SHORT_PROMPT.format(question=question)


def _score_mc(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    gold = row.answer.upper() if row.answer.upper() in row.options else can_infer_text(row.answer, row.options)
    extracted = extract_choice(prediction, row.options)
    return extracted, extracted is not None and extracted == gold


def _score_yes_no(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    read = pope_read(prediction)
    return read, read == row.answer.lower()


def _score_short(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    norm = normalize_answer(prediction)
    return norm, norm == normalize_answer(row.answer)


def _score_cot(prediction: str, row: BenchRow) -> tuple[str | None, bool]:
    from visalign.stages import correctness

    answer = correctness.extract(prediction).answer
    if answer is None:  # no parsable "Final answer:" line: wrong, and counted as unextractable
        return None, False
    return answer, correctness.score(answer, row.answer, row.answer_type or "") >= COT_THRESHOLD


SCORERS: dict[str, Callable[[str, BenchRow], tuple[str | None, bool]]] = {
    MULTIPLE_CHOICE: _score_mc, YES_NO: _score_yes_no, SHORT: _score_short, COT: _score_cot}


def _safe_key(category: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space and /; '/' separates levels here."""
    return re.sub(r"[^0-9A-Za-z_\-. ]", "_", category)


def _accuracy_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    return {"accuracy": sum(p.correct for p in preds) / len(preds)}


def _mc_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    # An unextractable answer is wrong (VLMEvalKit without a judge) and also counted on its own.
    return {**_accuracy_metrics(preds), "unextractable": float(sum(p.extracted is None for p in preds))}


def _yes_no_metrics(preds: Sequence[Prediction]) -> dict[str, float]:
    return pope_metrics([p.extracted or "yes" for p in preds], [p.answer for p in preds])


METRICS: dict[str, Callable[[Sequence[Prediction]], dict[str, float]]] = {
    MULTIPLE_CHOICE: _mc_metrics, YES_NO: _yes_no_metrics, SHORT: _accuracy_metrics, COT: _mc_metrics}


def benchmark_metrics(task: str, preds: Sequence[Prediction]) -> dict[str, float]:
    """Overall metrics plus '<category>/<metric>' per category (POPE: random/popular/adversarial)."""
    if not preds:
        return {"n": 0.0}
    out = {**METRICS[task](preds), "n": float(len(preds))}
    for cat in sorted({p.category for p in preds if p.category}):
        for k, v in METRICS[task]([p for p in preds if p.category == cat]).items():
            out[f"{_safe_key(cat)}/{k}"] = v
    return out


# ---- the stage --------------------------------------------------------------------------------

EngineFactory = Callable[[str, EvaluateParams], Any]


def default_engine(uri: str, params: EvaluateParams):
    """Load the model (an adapter resolves its base by itself) behind batched greedy generation."""
    from visalign.models import load_model
    from visalign.stages.rollout import HFEngine

    loaded = load_model(uri)
    return HFEngine(loaded.model, loaded.processor, batch_size=params.batch_size,
                    max_new_tokens=params.max_new_tokens)


def _release_memory() -> None:
    """Return the dropped model's memory before the next one loads: two 7B models need not fit."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _answer(engine: Any, bench: Benchmark, params: EvaluateParams, desc: str) -> tuple[list[Prediction], float]:
    """Generate in chunks (images are decoded per chunk, not per benchmark) and score each answer."""
    from PIL import Image

    from visalign.stages.rollout import GenerationRequest

    preds, seconds = [], 0.0
    chunks = [bench.rows[i:i + params.batch_size] for i in range(0, len(bench.rows), params.batch_size)]
    for chunk in progress(chunks, desc=desc, total=len(chunks)):
        requests = [GenerationRequest(id=r.index, question=build_question(r, bench.task),
                                      images=[Image.open(io.BytesIO(b)).convert("RGB") for b in r.images])
                    for r in chunk]
        start = time.monotonic()
        results = engine.generate(requests)
        seconds += time.monotonic() - start
        for row, res in zip(chunk, results, strict=True):
            extracted, correct = SCORERS[bench.task](res.text, row)
            preds.append(Prediction(index=row.index, question=row.question, answer=row.answer,
                                    prediction=res.text, extracted=extracted, correct=correct,
                                    category=row.category))
    return preds, seconds


def log_to_mlflow(results: dict[str, Any], output_dir: Path, run_id: str | None) -> str:
    """'<model>/<bench>/<metric>' metrics and results.json, under `run_id` or a new run."""
    import mlflow

    from visalign.infra import tracking

    with tracking.start_run(EXPERIMENT, run_name="evaluate", run_id=run_id) as active:
        for model, benches in results.items():
            if not model.startswith("_"):
                tracking.log_metrics_prefixed(benches, prefix=model)
        mlflow.log_artifact(str(output_dir / schema.RESULTS_FILE), artifact_path="evaluate")
        return active.info.run_id


def run(*, benchmarks: list[str], models: dict[str, str], output_dir: str, params: EvaluateParams,
        mlflow_run_id: str | None = None, engine_factory: EngineFactory | None = None) -> StageReport:
    """Score every model on every benchmark; write results.json, predictions and report.json."""
    report = StageReport("evaluate")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bad = [n for n in models if not n or n.startswith("_") or "/" in n]
    if not models or bad:
        raise ConfigError([f"models={dict(models)}: give at least one NAME=URI; names must not be empty, start "
                           f"with '_' or hold '/' (they key results.json and MLflow metrics): {bad}"])
    # Read (and validate) every benchmark before loading any model: a bad file fails in seconds.
    benches = [read_benchmark(uri, report, params.limit) for uri in find_benchmarks(benchmarks)]
    report.rows_in = sum(b.rows_read for b in benches)
    report.rows_out = sum(len(b.rows) for b in benches)
    results: dict[str, Any] = {}
    questions, seconds = 0, 0.0
    for name, uri in models.items():
        engine = (engine_factory or default_engine)(uri, params)
        results[name] = {}
        for bench in benches:
            preds, gen_seconds = _answer(engine, bench, params, desc=f"evaluate {name}/{bench.name}")
            schema.write_rows(out / "predictions" / name / f"{bench.name}.jsonl", preds)
            results[name][bench.name] = benchmark_metrics(bench.task, preds)
            questions, seconds = questions + len(preds), seconds + gen_seconds
            log.info("evaluate: %s on %s (%s): %s", name, bench.name, bench.task,
                     {k: round(v, 4) for k, v in results[name][bench.name].items() if "/" not in k})
        engine = None  # the last reference to the model: free it before loading the next
        _release_memory()
    results["_meta"] = {"benchmarks": {b.name: {"source": b.source, "task": b.task} for b in benches},
                        "rows": {b.name: len(b.rows) for b in benches}, "limit": params.limit,
                        "models": dict(models)}
    (out / schema.RESULTS_FILE).write_text(json.dumps(results, indent=2))
    if mlflow_run_id or os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow_run_id = log_to_mlflow(results, out, mlflow_run_id)
    report.extra.update(
        models=dict(models), benchmarks=results["_meta"]["benchmarks"], predictions=questions,
        generation_seconds=round(seconds, 3),
        questions_per_second=round(questions / seconds, 3) if seconds else None, mlflow_run_id=mlflow_run_id)
    report.write(out)
    return report


def _parse_models(items: Sequence[str]) -> dict[str, str]:
    pairs = [item.partition("=") for item in items]
    bad = [f"--model {a + eq + b!r}: write it as NAME=URI, e.g. aligned=s3://bucket/model"
           for a, eq, b in pairs if not (a and eq and b)]
    if bad:
        raise ConfigError(bad)
    return {name: uri for name, _, uri in pairs}


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--benchmark", action="append", required=True, dest="benchmarks",
                        help="VLMEvalKit TSV file, or a directory / s3:// prefix of them (repeatable).")
    parser.add_argument("--model", action="append", required=True, dest="models", metavar="NAME=URI",
                        help="Model to score, e.g. base=DIR and aligned=DIR (repeatable; adapters load their base).")
    parser.add_argument("--output", required=True, help="Output directory for results.json, predictions/ and report.json.")
    parser.add_argument("--mlflow-run-id", default=None, help="Log metrics into this MLflow run (default: a new run).")
    recipes.add_arguments(parser, "evaluate")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "evaluate")
    run(benchmarks=args.benchmarks, models=_parse_models(args.models), output_dir=args.output,
        params=recipe.evaluate, mlflow_run_id=args.mlflow_run_id)
    return 0
