"""Evaluate: answer VLMEvalKit-TSV benchmarks with each model (base, aligned) and score them.

The task type of a benchmark follows from its file (visalign.stages.benchmarks reads it). Answers
are read as VLMEvalKit reads them (visalign.stages.answer_matching, a port of its rules), so the
numbers compare with what papers report through it:

- multiple choice: can_infer (option letter, then option text); unreadable answers are wrong and
  counted (`unextractable`), refusals too (`refused`); MMBench-style CircularEval as an option;
- yes/no (POPE): VLMEvalKit's yes/no extraction (an answer with neither or both words is
  "Unknown", wrong either way, and counted); metrics per split and their mean as the headline,
  pooled over all rows under pooled/;
- MM-Vet and LLaVA-Bench: graded by a judge model (visalign.stages.judge, VLMEvalKit's prompts);
- short answers: exact match after normalisation; step-by-step (CoT): visalign.stages.correctness.

With evaluate.judge_extraction the judge also reads the answers the rules cannot (VLMEvalKit's LLM
answer extraction), counted apart as judge_extracted.

Each model is compared with the base on the same rows (visalign.stages.significance): the
difference per benchmark, category and metric with a paired bootstrap interval and a p-value
(McNemar for accuracies), under "_paired" in results.json; register's gate reads it.

    results.json                         {"<model>": {"<bench>": {"<metric>": value}}, "_paired": {...},
                                          "_meta": {...}}
    predictions/<model>/<bench>.jsonl    one schema.Prediction per question
    comparison.md                        base vs aligned with deltas (Markdown)
    judge_cache.jsonl                    judge answers by prompt (when a judge is used)
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from visalign import schema
from visalign.errors import StageError
from visalign.inputs import output_path
from visalign.recipes import ConfigError, EvaluateParams
from visalign.report import StageReport, progress
from visalign.schema import Prediction
from visalign.stages.answer_matching import UNKNOWN, choice_with_judge, yorn_with_judge
from visalign.stages.benchmarks import (
    JUDGED,
    LLAVA_BENCH,
    MMVET,
    MULTIPLE_CHOICE,
    YES_NO,
    Benchmark,
    find_benchmarks,
    read_benchmark,
)
from visalign.stages.metrics import (
    SCORERS,
    benchmark_metrics,
    build_question,
    gold_letter,
    is_circular,
    is_pope,
)

log = logging.getLogger(__name__)

EXPERIMENT = "visalign"
PAIRED = schema.PAIRED_KEY
BASE = "base"
COMPARISON_FILE = "comparison.md"  # base vs aligned, the evaluate step's Markdown in the Kubeflow UI
JUDGE_CACHE_FILE = "judge_cache.jsonl"


# ---- the stage --------------------------------------------------------------------------------

EngineFactory = Callable[[str, EvaluateParams], Any]


class JudgeOutage(StageError):
    """The judge gave no answer to some calls: the scores would be wrong, so the step fails."""


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
    from visalign.inputs import load_rgb
    from visalign.stages.rollout import GenerationRequest

    if hasattr(engine, "max_new_tokens"):  # open-ended benchmarks get longer answers than short ones
        engine.max_new_tokens = params.open_max_new_tokens if bench.task in JUDGED else params.max_new_tokens
    preds, seconds = [], 0.0
    chunks = [bench.rows[i:i + params.batch_size] for i in range(0, len(bench.rows), params.batch_size)]
    for chunk in progress(chunks, desc=desc, total=len(chunks)):
        requests = [GenerationRequest(id=r.index, question=build_question(r, bench.task),
                                      images=[load_rgb(b, f"{bench.source} index {r.index}") for b in r.images])
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


def build_judge(params: EvaluateParams, output_dir: Path):
    """The judge `params.judge` names (None for "none"), its cache in judge_cache or the output."""
    if params.judge == "none":
        return None
    from visalign.infra.endpoint import ChatEndpoint, EndpointConfig, RetryPolicy
    from visalign.stages import judge

    config = EndpointConfig.from_env(judge.ENV_PREFIX, "evaluate.judge='endpoint'")
    policy = RetryPolicy(timeout_s=params.judge_timeout_s, retries=params.judge_retries,
                         concurrency=params.judge_concurrency)
    cache = judge.JudgeCache(params.judge_cache or output_dir / JUDGE_CACHE_FILE)
    return judge.Judge(ChatEndpoint(config, policy, name="judge"), cache, max_tokens=params.judge_max_tokens)


def _judge_benchmark(bench: Benchmark, preds: list[Prediction], judge: Any, params: EvaluateParams) -> dict[str, float]:
    """Judge scores (MM-Vet, LLaVA-Bench) or judge readings of unreadable answers, in place; the counts."""
    from visalign.stages import judge as judging

    if judge is None:
        return {}
    counts: Counter[str] = Counter()
    rows = {r.index: r for r in bench.rows}
    before = Counter(judge.stats)
    if bench.task == MMVET:
        scores = judging.mmvet_scores(judge, [(p.question, p.answer, p.prediction) for p in preds], counts)
        for p, score in zip(preds, scores, strict=True):
            p.score, p.correct, p.extracted = score, score == 1.0, f"{score:g}"
    elif bench.task == LLAVA_BENCH:
        pairs = judging.llava_bench_scores(judge, [(rows[p.index].caption or "", p.question, p.answer, p.prediction)
                                                   for p in preds], counts)
        for p, (ref, pred) in zip(preds, pairs, strict=True):
            p.reference_score, p.score, p.extracted = ref, pred, f"{pred:g}"
            p.correct = pred >= ref > 0  # judged at least as good as the reference answer
    elif params.judge_extraction and bench.task in (MULTIPLE_CHOICE, YES_NO):
        ask = judge.asker_for_extraction()
        for p in preds:
            row = rows[p.index]
            if bench.task == MULTIPLE_CHOICE and p.extracted is None:
                p.extracted, p.judge = choice_with_judge(row.question, row.options, p.prediction, ask)
                p.correct = p.extracted is not None and p.extracted == gold_letter(row)
                counts["judge_extracted"] += p.extracted is not None
            elif bench.task == YES_NO and p.extracted == UNKNOWN:
                p.extracted = yorn_with_judge(row.question, p.prediction, ask)
                p.correct = p.extracted.lower() == row.answer.strip().lower()
                counts["judge_extracted"] += p.extracted != UNKNOWN
    else:
        return {}
    counts.update({f"judge_{k}": judge.stats[k] - before[k] for k in ("calls", "cache_hits", "no_answer")})
    return dict(counts)


def reference_model(names: Sequence[str]) -> str:
    """What the others are compared with: the base model when one is named so, else the first."""
    return BASE if BASE in names else names[0]


def paired_results(benches: list[Benchmark], predictions: dict[tuple[str, str], list[Prediction]],
                   names: list[str], params: EvaluateParams, circular: dict[str, bool]) -> dict[str, Any]:
    """Each model against the reference on the same rows (visalign.stages.significance)."""
    from visalign.stages.significance import paired_comparison

    reference = reference_model(names)
    out: dict[str, Any] = {"reference": reference, "samples": params.significance_samples,
                           "confidence": params.confidence, "seed": params.significance_seed, "models": {}}
    for name in (n for n in names if n != reference):
        out["models"][name] = {}
        for bench in benches:
            golds = {r.index: gold_letter(r) for r in bench.rows} if circular[bench.name] else None

            def metric_fn(preds, draw_golds, bench=bench):
                return benchmark_metrics(bench.task, preds, circular_golds=draw_golds, split_mean=is_pope(bench))

            start = time.monotonic()
            out["models"][name][bench.name] = paired_comparison(
                metric_fn, predictions[reference, bench.name], predictions[name, bench.name],
                circular=circular[bench.name], golds=golds, samples=params.significance_samples,
                confidence=params.confidence, seed=params.significance_seed)
            log.info("evaluate: paired %s vs %s on %s in %.1f s", name, reference, bench.name,
                     time.monotonic() - start)
    return out


def _paired_cells(entry: dict[str, Any] | None) -> list[str]:
    if not entry:
        return ["", ""]
    return [f"[{entry['low']:+.3f}, {entry['high']:+.3f}]", f"{entry['p_value']:.3g} ({entry['test']})"]


def comparison_markdown(results: dict[str, Any]) -> str:
    """Base vs aligned (or the reference vs each other) per benchmark and metric, with deltas, their
    paired interval and p-value."""
    names = [m for m in results if not m.startswith("_")]
    if not names:
        return "# Evaluation\n\nNo model was scored.\n"
    first = reference_model(names)
    others = [n for n in names if n != first]
    paired = results.get(PAIRED, {})
    level = f"{paired.get('confidence', 0.95):.0%}"
    head = ["benchmark", "metric", first, *[x for o in others for x in (o, f"{o} - {first}", f"{level} interval",
                                                                          "p (test)")]]
    lines = ["# Evaluation", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, metrics in results[first].items():
        for metric, value in metrics.items():
            if not isinstance(value, (int, float)):
                continue
            cells = [bench, metric, f"{value:.4g}"]
            for o in others:
                v = results[o].get(bench, {}).get(metric)
                entry = paired.get("models", {}).get(o, {}).get(bench, {}).get(metric)
                cells += ["", "", "", ""] if v is None else [f"{v:.4g}", f"{v - value:+.4g}", *_paired_cells(entry)]
            lines.append("| " + " | ".join(cells) + " |")
    if paired:
        lines += ["", f"Intervals: paired bootstrap over the same rows ({paired['samples']} draws within categories, "
                      f"seed {paired['seed']}); p: McNemar's exact test for accuracies, a paired permutation test "
                      "otherwise."]
    meta = results.get("_meta", {})
    if meta.get("judge"):
        lines += ["", f"Judge: {meta['judge'].get('model')} at {meta['judge'].get('url')} "
                      f"(prompts {meta['judge'].get('prompt_version')})."]
    return "\n".join(lines) + "\n"


def log_to_mlflow(results: dict[str, Any], output_dir: Path, run_id: str | None,
                  predictions: dict[tuple[str, str], list[Prediction]]) -> str:
    """'<model>/<bench>/<metric>' metrics, results.json, the comparison and each prediction table."""
    import dataclasses

    import mlflow

    from visalign.infra import tracking

    with tracking.start_run(EXPERIMENT, run_name="evaluate", run_id=run_id) as active:
        for model, benches in results.items():
            if not model.startswith("_"):
                tracking.log_metrics_prefixed(benches, prefix=model)
        mlflow.log_artifact(str(output_dir / schema.RESULTS_FILE), artifact_path="evaluate")
        mlflow.log_artifact(str(output_dir / COMPARISON_FILE), artifact_path="evaluate")
        for (model, bench), preds in sorted(predictions.items()):
            if preds:  # one table per model and benchmark, shown in the MLflow UI's evaluation view
                table = {f.name: [getattr(p, f.name) for p in preds] for f in dataclasses.fields(Prediction)}
                mlflow.log_table(table, artifact_file=f"evaluate/predictions/{model}/{bench}.json")
        return active.info.run_id


def run(*, benchmarks: list[str], models: dict[str, str], output_dir: str, params: EvaluateParams,
        mlflow_run_id: str | None = None, engine_factory: EngineFactory | None = None,
        judge: Any = None) -> StageReport:
    """Score every model on every benchmark; write results.json, predictions, comparison.md and report.json.

    `judge` replaces the one params.judge builds (tests give a stand-in)."""
    report = StageReport("evaluate")
    logs_to_mlflow = bool(mlflow_run_id or os.environ.get("MLFLOW_TRACKING_URI"))
    if logs_to_mlflow:  # a tracking server that is down fails here, not after every model has answered
        from visalign.infra import tracking

        tracking.check_reachable()
    out = output_path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    bad = [n for n in models if not n or n.startswith("_") or "/" in n]
    if not models or bad:
        raise ConfigError([f"models={dict(models)}: give at least one NAME=URI; names must not be empty, start "
                           f"with '_' or hold '/' (they key results.json and MLflow metrics): {bad}"])
    # Read (and validate) every benchmark before loading any model: a bad file fails in seconds.
    benches = [read_benchmark(uri, report, params.limit) for uri in find_benchmarks(benchmarks)]
    report.rows_in = sum(b.rows_read for b in benches)
    report.rows_out = sum(len(b.rows) for b in benches)
    judge = judge if judge is not None else build_judge(params, out)
    judged = [b.name for b in benches if b.task in JUDGED]
    if judged and judge is None:
        raise ConfigError([f"benchmarks {judged} are judge-scored (MM-Vet / LLaVA-Bench): set evaluate.judge=endpoint "
                           "and VISALIGN_JUDGE_URL, VISALIGN_JUDGE_MODEL (and VISALIGN_JUDGE_API_KEY) in the "
                           "environment (on a cluster: the judge Secret), or leave these benchmarks out"])
    circular = {b.name: is_circular(b, params.circular) for b in benches}
    for b in benches:
        bad_index = [r.index for r in b.rows if not r.index.lstrip("-").isdigit()] if circular[b.name] else []
        if bad_index:
            raise ConfigError([f"{b.source}: CircularEval groups rows by integer index (index % 1e6); field 'index' "
                               f"is not an integer in {len(bad_index)} rows, e.g. {bad_index[:3]}: fix them or set "
                               "evaluate.circular=off"])
    results: dict[str, Any] = {}
    predictions: dict[tuple[str, str], list[Prediction]] = {}
    questions, seconds = 0, 0.0
    for name, uri in models.items():
        engine = (engine_factory or default_engine)(uri, params)
        results[name] = {}
        for bench in benches:
            preds, gen_seconds = _answer(engine, bench, params, desc=f"evaluate {name}/{bench.name}")
            counts = _judge_benchmark(bench, preds, judge, params)
            schema.write_rows(out / "predictions" / name / f"{bench.name}.jsonl", preds)
            predictions[name, bench.name] = preds
            if counts.get("judge_unanswered"):
                raise JudgeOutage(
                    f"evaluate: the judge {judge.identity.get('url')} (model {judge.identity.get('model')}) gave no "
                    f"answer at all for {counts['judge_unanswered']} of {len(preds)} rows of {name}/{bench.name}; "
                    f"its answers so far are kept in {judge.cache.uri} and a re-run asks only the rest (set "
                    f"evaluate.judge_cache to an s3:// URI so they outlive the pod). Judge stats: {counts}")
            golds = {r.index: gold_letter(r) for r in bench.rows} if circular[bench.name] else None
            results[name][bench.name] = benchmark_metrics(bench.task, preds, circular_golds=golds, counts=counts,
                                                          split_mean=is_pope(bench))
            questions, seconds = questions + len(preds), seconds + gen_seconds
            log.info("evaluate: %s on %s (%s): %s", name, bench.name, bench.task,
                     {k: round(v, 4) for k, v in results[name][bench.name].items() if "/" not in k})
        engine = None  # the last reference to the model: free it before loading the next
        _release_memory()
    if params.significance_samples:
        results[PAIRED] = paired_results(benches, predictions, list(models), params, circular)
    results["_meta"] = {"benchmarks": {b.name: {"source": b.source, "task": b.task, "circular": circular[b.name]}
                                       for b in benches},
                        "rows": {b.name: len(b.rows) for b in benches}, "limit": params.limit,
                        "models": dict(models), "judge": judge.provenance() if judge is not None else None}
    (out / schema.RESULTS_FILE).write_text(json.dumps(results, indent=2))
    (out / COMPARISON_FILE).write_text(comparison_markdown(results))
    report.extra.update(
        models=dict(models), benchmarks=results["_meta"]["benchmarks"], predictions=questions,
        generation_seconds=round(seconds, 3),
        questions_per_second=round(questions / seconds, 3) if seconds else None, mlflow_run_id=mlflow_run_id,
        judge=dict(judge.stats) if judge is not None else None)
    report.write(out)  # before MLflow: if logging fails, results.json and report.json are both there
    if logs_to_mlflow:
        report.extra["mlflow_run_id"] = log_to_mlflow(results, out, mlflow_run_id, predictions)
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
