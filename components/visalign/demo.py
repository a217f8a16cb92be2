"""`visalign demo`: a recipe end to end on this machine, the way a cluster would run it.

Builds the toy world and its base model (cached), starts the local stack (SeaweedFS S3 + MLflow)
unless one is running, uploads seeds, benchmarks and the base model to S3, runs the recipe's
pipeline through kfp.local on those s3:// inputs, and prints and saves a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _timed(label: str, timings: dict[str, float]):
    class Timer:
        def __enter__(self):
            self.start = time.monotonic()
            log.info("demo: %s ...", label)

        def __exit__(self, *exc):
            timings[label] = round(time.monotonic() - self.start, 2)

    return Timer()


# Recipes whose toy base model learns more than toyworld's standard SFT mix:
# recipe -> (module, trainer function, its default step count).
BASE_MODEL_TRAINERS = {"ipa": ("visalign.toyworld.ipa_sft", "train_ipa_base_model", "DEFAULT_IPA_BASE_STEPS"),
                       "mpo": ("visalign.toyworld.mpo_sft", "train_mpo_base_model", "DEFAULT_MPO_BASE_STEPS")}
# Recipes whose seeds are not toyworld's seeds/llava.json (file under the world's seeds/).
RECIPE_SEEDS = {"mpo": "steps.json"}  # step-by-step questions with and without ground truth


def _base_trainer(recipe: str):
    import importlib

    from visalign.toyworld import DEFAULT_BASE_STEPS, train_base_model

    if recipe not in BASE_MODEL_TRAINERS:
        return train_base_model, DEFAULT_BASE_STEPS
    module, fn, steps = BASE_MODEL_TRAINERS[recipe]
    mod = importlib.import_module(module)
    return getattr(mod, fn), getattr(mod, steps)


def prepare_inputs(out: Path, seed: int, base_steps: int, timings: dict[str, float],
                   recipe: str = "seva") -> tuple[Path, Path]:
    """The toy world and its base model, built once per (seed, steps, world format) and reused."""
    import shutil

    from visalign.toyworld import FORMAT_VERSION, build_world, world_is_current
    from visalign.toyworld.judged import write_judged_data
    from visalign.toyworld.steps import write_step_data

    train_base_model, _ = _base_trainer(recipe)
    tag = f"{recipe}-" if recipe in BASE_MODEL_TRAINERS else ""
    # The format version is in the model's name: a base model trained on an older world is not reused.
    world, model = out / f"world-{seed}", out / f"base-model-{tag}{seed}-{base_steps}-v{FORMAT_VERSION}"
    if not world_is_current(world):
        with _timed("build toy world", timings):
            if world.exists():  # an older format (or a half-built world): its extra files would be kept
                log.info("demo: %s is not a world of format %d; rebuilding it", world, FORMAT_VERSION)
                shutil.rmtree(world)
            build_world(world, seed=seed)
    # MPO's step-by-step seeds and benchmark (idempotent, also for a world built before they existed):
    # every recipe's demo then scores the same benchmarks, whichever demo ran first in this folder.
    write_step_data(world, seed=seed)
    write_judged_data(world, seed=seed)  # toy_mmvet.tsv: the judge-scored benchmark, same idempotence
    if not (model / "config.json").exists():
        with _timed("train base model", timings):
            train_base_model(world, model, steps=base_steps, seed=seed)
    return world, model


def upload_inputs(world: Path, model: Path, bucket: str, timings: dict[str, float]) -> dict[str, Any]:
    from visalign.infra import store

    prefix = f"s3://{bucket}/demo"
    with _timed("upload inputs to S3", timings):
        store.upload_dir(world / "seeds", f"{prefix}/seeds")
        store.upload_dir(world / "benchmarks", f"{prefix}/benchmarks")
        store.upload_dir(model, f"{prefix}/models/{model.name}")
    benchmarks = sorted(p.name for p in (world / "benchmarks").glob("*.tsv"))
    return {"seeds": [f"{prefix}/seeds/llava.json"], "benchmarks": [f"{prefix}/benchmarks/{b}" for b in benchmarks],
            "base_model": f"{prefix}/models/{model.name}"}


def _start_toy_judge(out: Path, overrides: dict[str, Any]):
    """toy_mmvet is judge-scored: unless the user names a judge (evaluate.judge and VISALIGN_JUDGE_*),
    the toy world's stand-in judge answers behind a local endpoint; its answers are cached in
    out/judge_cache.jsonl, so a second demo pays only for new predictions."""
    if "evaluate.judge" in overrides:
        return None
    from visalign.stages.judge import ENV_PREFIX
    from visalign.toyworld.judged import TOY_JUDGE_MODEL, serve_toy_judge

    server, url = serve_toy_judge()
    os.environ.update({f"{ENV_PREFIX}_URL": url, f"{ENV_PREFIX}_MODEL": TOY_JUDGE_MODEL})
    overrides.update({"evaluate.judge": "endpoint", "evaluate.judge_cache": str((out / "judge_cache.jsonl").resolve())})
    print(f"judge: the toy world's stand-in judge at {url} (scripted scores, not a model)")
    return server


def summarize(recipe: str, run_dir: Path, timings: dict[str, float]) -> dict[str, Any]:
    if recipe == "ipa":  # several tasks per stage (one per round): read through the IR's display names
        from visalign.ipa import summary as ipa_summary

        return ipa_summary.summarize(run_dir, timings)
    from visalign_pipelines.local import find_output, stage_reports

    reports = stage_reports(run_dir)
    results = json.loads((find_output(run_dir, "evaluate", "results") / "results.json").read_text())
    registry = reports.get("register", {})
    return {
        "recipe": recipe,
        "stages": [{"name": name, "rows_in": r.get("rows_in"), "rows_out": r.get("rows_out"),
                    "seconds": r.get("seconds")} for name, r in reports.items()],
        "metrics": {"base": results.get("base", {}), "aligned": results.get("aligned", {})},
        "paired": results.get("_paired"),  # aligned vs base on the same rows: intervals and p-values
        "registry": {"model": registry.get("model"), "version": registry.get("version"),
                     "alias": registry.get("alias"), "reasons": registry.get("reasons")},
        "timings": timings,
        "run_dir": str(run_dir),
    }


def print_summary(summary: dict[str, Any], mlflow_url: str) -> None:
    print(f"\n== visalign demo: recipe {summary['recipe']} ==")
    print(f"{'stage':<10}{'rows in':>9}{'rows out':>10}{'seconds':>10}")
    for s in summary["stages"]:
        print(f"{s['name']:<10}{s['rows_in']:>9}{s['rows_out']:>10}{s['seconds']:>10.1f}")
    paired = (summary.get("paired") or {}).get("models", {}).get("aligned", {})
    print("\nbenchmark metric              base   aligned   95% interval of the difference   p")
    for bench, metrics in summary["metrics"]["base"].items():
        for metric, value in metrics.items():
            aligned = summary["metrics"]["aligned"].get(bench, {}).get(metric)
            if isinstance(value, (int, float)) and "/" not in metric:
                e = paired.get(bench, {}).get(metric)
                sig = f"   [{e['low']:+.3f}, {e['high']:+.3f}]{e['p_value']:>21.3g}" if e else ""
                print(f"{bench + '/' + metric:<28}{value:>7.3f}"
                      f"{aligned if aligned is None else f'{aligned:>10.3f}'}{sig}")
    reg = summary["registry"]
    print(f"\nregistry: {reg['model']} version {reg['version']} -> @{reg['alias']}")
    for reason in reg.get("reasons") or []:
        print(f"  - {reason}")
    print(f"\nMLflow UI: {mlflow_url}    stop the stack with: visalign stack down")


def run(*, recipe: str, out: Path, seed: int = 0, base_steps: int | None = None,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from visalign_pipelines.local import run_pipeline

    from visalign.infra import stack

    timings: dict[str, float] = {}
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    world, model = prepare_inputs(out, seed, base_steps or _base_trainer(recipe)[1], timings, recipe)
    settings = stack.StackSettings.from_env()
    with _timed("stack up", timings):
        info = stack.ensure_up(settings)
    os.environ.update(info.env)  # the stack actually running (it may have been started on other ports)
    inputs = upload_inputs(world, model, settings.bucket, timings)
    if recipe in RECIPE_SEEDS:
        inputs["seeds"] = [inputs["seeds"][0].rsplit("/", 1)[0] + "/" + RECIPE_SEEDS[recipe]]
    overrides = dict(overrides or {})
    judge = _start_toy_judge(out, overrides)
    with _timed("pipeline", timings):
        extra = {"rounds": int(overrides.pop("ipa.rounds"))} if "ipa.rounds" in overrides else {}  # a pipeline parameter
        run_dir = run_pipeline(recipe, {**inputs, **extra, "profile": "toy", "overrides": overrides,
                                        "experiment": f"visalign-{recipe}-demo"}, out / "kfp-runs")
    if judge is not None:
        judge.shutdown()
    timings["total"] = round(time.monotonic() - start, 2)
    summary = summarize(recipe, run_dir, timings)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, info.mlflow_url)
    if recipe == "ipa":
        from visalign.ipa.summary import print_rounds

        print_rounds(summary)
    return summary


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="seva", help="Recipe (pipeline) to run.")
    parser.add_argument("--out", default="demo-output", help="Where the world, model, runs and summary.json go.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the toy world and base model.")
    parser.add_argument("--base-steps", type=int, default=None, help="SFT steps of the toy base model.")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="Override a recipe parameter of the run (repeatable).")


def cli(args: argparse.Namespace) -> int:
    overrides = dict(item.split("=", 1) for item in args.set)
    run(recipe=args.recipe, out=Path(args.out), seed=args.seed, base_steps=args.base_steps, overrides=overrides)
    return 0
