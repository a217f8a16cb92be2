"""Register: put the aligned model into the MLflow registry and decide champion or challenger.

The promotion gate is a pure function (`decide`): the candidate becomes `champion` only when it
beats the current champion (or, with none yet, the base model it was trained from) on the target
metric by more than `min_improvement`, and no guard metric drops by more than `max_guard_drop`
against that same reference. With `require_significance` (the default) the gain must also be beyond
chance: evaluate's paired interval (aligned vs base, same rows) lies above `min_improvement` with a
p-value below 1 - confidence, and a guard fails only when its whole interval lies below
-`max_guard_drop`. Otherwise it becomes `challenger`. Every comparison goes into the decision's
reasons, with its numbers.

The model directory is logged as an MLflow pyfunc model (the directory is an artifact of a small
PythonModel that loads it with visalign.models.load_model), so `models:/<name>@champion` both
downloads as the plain Hugging Face directory and loads with mlflow.pyfunc.load_model. The
version's tags hold the data and evaluation provenance, including every candidate metric as
`eval.<bench>/<metric>`: a later run reads the champion's numbers from there.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pydantic

from visalign import schema
from visalign.errors import InputError
from visalign.infra import store
from visalign.inputs import output_path
from visalign.recipes import RegisterParams
from visalign.report import StageReport

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
CANDIDATE, BASE = "aligned", "base"  # the model names evaluate's results.json is keyed by
EXPERIMENT = "visalign"
METRIC_TAG = "eval."  # version tag prefix of the evaluation metrics: eval.<bench>/<metric>
MODEL_ARTIFACT = "model"
# Differences are compared after rounding: 0.80 - 0.79 is 0.010000000000000009 in floating point,
# which must not count as a drop above a 0.01 allowance.
DIGITS = 9

Metrics = dict[str, dict[str, float]]
# evaluate's paired comparison of the candidate with the base: {"confidence": 0.95, "benchmarks": bench -> metric
# -> {"difference", "low", "high", "p_value", "test"}}
Paired = dict[str, Any]


class MetricNotFound(ValueError):
    pass


@dataclass
class Decision:
    alias: str  # CHAMPION or CHALLENGER
    reference: str  # "champion v<N>" or "base"
    reasons: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def metric_value(metrics: Metrics, key: str, whose: str) -> float:
    """metrics['bench']['metric'] for key 'bench/metric' (the metric may hold '/': 'random/f1')."""
    bench, _, name = key.partition("/")
    try:
        return float(metrics[bench][name])
    except (KeyError, TypeError, ValueError):
        available = sorted(f"{b}/{m}" for b, ms in metrics.items() if isinstance(ms, dict) for m in ms)
        raise MetricNotFound(
            f"metric {key!r}: not in the {whose}'s evaluation results; available: {available}. "
            "Set register.target_metric / register.guard_metrics to metrics that evaluate produces."
        ) from None


def paired_entry(paired: Paired, key: str) -> dict[str, Any]:
    """evaluate's paired comparison (aligned vs base) of metric 'bench/metric'."""
    bench, _, name = key.partition("/")
    try:
        entry = paired["benchmarks"][bench][name]
        return {k: entry[k] for k in ("difference", "low", "high", "p_value", "test")}
    except (KeyError, TypeError):
        raise MetricNotFound(
            f"metric {key!r}: evaluate's paired comparison (results.json '_paired', aligned vs base) has no entry "
            f"for it; re-run evaluate with evaluate.significance_samples > 0, or set "
            "register.require_significance=false to compare point values only") from None


def _interval(e: dict[str, Any]) -> str:
    return f"difference {e['difference']:+.4f}, interval [{e['low']:+.4f}, {e['high']:+.4f}], p {e['p_value']:.3g} " \
           f"({e['test']})"


def decide(candidate: Metrics, champion: dict[str, Any] | None, base: Metrics, params: RegisterParams,
           paired: Paired | None = None) -> Decision:
    """Champion or challenger for `candidate` (metrics keyed bench -> metric).

    `champion` is None or {"version": <N>, "metrics": <bench -> metric>}; without one the
    candidate is compared with `base`. With params.require_significance, `paired` (evaluate's
    aligned-vs-base comparison) decides too: the target's interval must lie above min_improvement and
    its p-value below 1 - confidence (a percentile interval alone calls a gain of a handful of rows
    real), and no guard's interval may lie wholly below -max_guard_drop. Against a champion
    the point values must also show the gain (the champion's own answers to these rows are not here).
    """
    if champion is not None:
        reference, ref = f"champion v{champion['version']}", champion["metrics"]
    else:
        reference, ref = "base", base
    significance = params.require_significance
    target = params.target_metric
    cand_value, ref_value = metric_value(candidate, target, "candidate"), metric_value(ref, target, reference)
    if significance and paired is None:
        raise MetricNotFound("register.require_significance=True, but evaluate's results.json has no paired "
                             "comparison of aligned with base ('_paired'): re-run evaluate with "
                             "evaluate.significance_samples > 0, or set register.require_significance=false to "
                             "compare point values only")
    gain = round(cand_value - ref_value, DIGITS)
    beats = gain > params.min_improvement
    reasons = [f"target {target}: candidate {cand_value:.4f} vs {reference} {ref_value:.4f}, gain {gain:+.4f} "
               f"{'>' if beats else '<='} min_improvement {params.min_improvement:.4f}: "
               f"{'improves' if beats else 'does not improve enough'}"]
    if significance:  # the interval above the allowance and the test significant at the same level
        e, alpha = paired_entry(paired, target), round(1 - paired["confidence"], DIGITS)
        above, tested = round(e["low"], DIGITS) > params.min_improvement, e["p_value"] < alpha
        real = above and tested
        reasons.append(f"target {target} vs base, paired: {_interval(e)}; lower bound "
                       f"{'>' if above else '<='} min_improvement {params.min_improvement:.4f}, p "
                       f"{'<' if tested else '>='} {alpha:g}: "
                       f"{'a gain beyond chance' if real else 'not distinguishable from chance'}")
        beats = beats and real
    guards_ok = True
    for guard in params.guard_metrics:
        c, r = metric_value(candidate, guard, "candidate"), metric_value(ref, guard, reference)
        drop = round(r - c, DIGITS)
        if significance:  # a drop counts when the whole interval lies beyond the allowance
            e = paired_entry(paired, guard)
            ok = round(e["high"], DIGITS) >= -params.max_guard_drop
            if champion is not None:
                ok = ok and drop <= params.max_guard_drop
            reasons.append(f"guard {guard}: candidate {c:.4f} vs {reference} {r:.4f}; vs base, paired: "
                           f"{_interval(e)}; upper bound {'>=' if ok else '<'} -max_guard_drop "
                           f"{-params.max_guard_drop:.4f}: {'holds' if ok else 'drops beyond chance'}")
        else:
            ok = drop <= params.max_guard_drop
            reasons.append(f"guard {guard}: candidate {c:.4f} vs {reference} {r:.4f}, drop {drop:+.4f} "
                           f"{'<=' if ok else '>'} max_guard_drop {params.max_guard_drop:.4f}: "
                           f"{'holds' if ok else 'drops too much'}")
        guards_ok = guards_ok and ok
    alias = CHAMPION if beats and guards_ok else CHALLENGER
    how = "paired intervals" if significance else "point values"
    reasons.append(f"decision: {alias} (compared with {reference}, by {how})")
    return Decision(alias=alias, reference=reference, reasons=reasons)


# ---- MLflow ----------------------------------------------------------------------------------

class Question(pydantic.BaseModel):
    """One request to the served model: the question and its images as base64 strings."""

    question: str
    images: list[str] = []


class VisalignVLM(mlflow.pyfunc.PythonModel):
    """The logged model: a Hugging Face model or PEFT adapter directory, answering questions.

    Adapters resolve their base through their visalign_model.json, exactly as in the stages.
    The typed input gives the registered model a real signature (question, images).
    """

    def load_context(self, context) -> None:
        from visalign.models import load_model
        from visalign.stages.rollout import HFEngine

        loaded = load_model(context.artifacts[MODEL_ARTIFACT])
        self.engine = HFEngine(loaded.model, loaded.processor, batch_size=8, max_new_tokens=64)

    def predict(self, context, model_input: list[Question], params: dict[str, str] | None = None) -> list[str]:
        import base64

        from visalign.inputs import load_rgb
        from visalign.stages.rollout import GenerationRequest

        requests = [GenerationRequest(id=str(i), question=q.question, images=[
            load_rgb(base64.b64decode(b), f"question {i}: image {k}") for k, b in enumerate(q.images)])
            for i, q in enumerate(model_input)]
        return [r.text for r in self.engine.generate(requests)]


def _requirements() -> list[str]:
    """Pinned from this environment: MLflow's inference would load the model in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("mlflow", "torch", "transformers", "peft", "accelerate", "pillow", "minio"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def log_model(model_dir: Path) -> Any:
    """Log the directory as a pyfunc model of the active run; returns MLflow's ModelInfo.

    code_paths carries the visalign package itself, so the model loads where visalign is not
    installed (it is not on PyPI, so it cannot be a pip requirement).
    """
    return mlflow.pyfunc.log_model(
        name=MODEL_ARTIFACT, python_model=VisalignVLM(), artifacts={MODEL_ARTIFACT: str(model_dir)},
        code_paths=[str(Path(__file__).parent)], pip_requirements=_requirements())


def current_champion(client: Any, name: str) -> dict[str, Any] | None:
    """{"version", "metrics"} of the version holding the champion alias; None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as e:
        # MLflow 3.17's server answers RESOURCE_DOES_NOT_EXIST when the registered model does not
        # exist yet and INVALID_PARAMETER_VALUE when it has no such alias: both mean no champion.
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    metrics: Metrics = {}
    for key, value in version.tags.items():
        if key.startswith(METRIC_TAG):
            bench, _, metric = key[len(METRIC_TAG):].partition("/")
            metrics.setdefault(bench, {})[metric] = float(value)
    return {"version": version.version, "metrics": metrics}


def version_tags(candidate: Metrics, base: Metrics, card: schema.ModelCard | None, eval_dir: str,
                 extra: dict[str, Any] | None) -> dict[str, str]:
    """Provenance for the registry: what data, which recipe, which numbers (all strings)."""
    tags: dict[str, str] = {"visalign.eval_dir": eval_dir}
    for bench, values in candidate.items():
        for metric, value in values.items():
            tags[f"{METRIC_TAG}{bench}/{metric}"] = repr(float(value))
    for bench, values in base.items():
        for metric, value in values.items():
            tags[f"base_{METRIC_TAG}{bench}/{metric}"] = repr(float(value))
    if card is not None:
        tags.update({"visalign.model_kind": card.kind, "visalign.base_model": str(card.base),
                     "visalign.recipe_name": str(card.recipe.get("name", "")),
                     "visalign.recipe": json.dumps(card.recipe, sort_keys=True, default=str),
                     "visalign.train_run_id": str(card.mlflow_run_id)})
        for key, value in card.data.items():
            tags[f"data.{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


def _run_id_for(card: schema.ModelCard | None, client: Any) -> str | None:
    """The training run, when the card names one this server knows; else None (a new run)."""
    from mlflow.exceptions import MlflowException

    if card is None or not card.mlflow_run_id:
        return None
    try:
        client.get_run(card.mlflow_run_id)
    except MlflowException:
        log.warning("register: the card's MLflow run %s is not on this server; using a new run",
                    card.mlflow_run_id)
        return None
    return card.mlflow_run_id


# ---- the stage -------------------------------------------------------------------------------

def read_results(eval_dir: str) -> tuple[Metrics, Metrics, Paired | None]:
    """The candidate's and the base's metrics, and their paired comparison, from evaluate's results.json."""
    uri = f"{str(eval_dir).rstrip('/')}/{schema.RESULTS_FILE}"
    try:
        results = json.loads(store.read_text(uri))
    except json.JSONDecodeError as e:
        raise InputError(uri, f"not valid JSON ({e.msg} at line {e.lineno}); expected evaluate's "
                         "results.json") from None
    missing = [m for m in (CANDIDATE, BASE) if m not in results]
    if missing:
        models = sorted(k for k in results if not k.startswith("_"))
        raise InputError(uri, f"no results for model(s) {missing}; found {models}. "
                         f"Run evaluate with --model {BASE}=<base> --model {CANDIDATE}=<aligned model>.")
    paired = results.get(schema.PAIRED_KEY, {})
    if paired.get("reference") != BASE or CANDIDATE not in paired.get("models", {}):
        return results[CANDIDATE], results[BASE], None
    return results[CANDIDATE], results[BASE], {"confidence": paired["confidence"],
                                                "benchmarks": paired["models"][CANDIDATE]}


def run(*, model_dir: str, eval_dir: str, output_dir: str, params: RegisterParams,
        tags: dict | None = None) -> StageReport:
    """Log and register the model, decide champion or challenger, set the alias, write report.json."""
    from visalign.infra import tracking
    from visalign.models import local_dir

    tracking.check_reachable()  # in seconds, before a model download (MLflow's client retries ~250 s)
    output_dir = output_path(output_dir)  # refused before the model is registered, not after
    report = StageReport("register")
    candidate, base, paired = read_results(eval_dir)
    path = local_dir(model_dir)
    card = schema.read_model_card(path)
    mlflow.set_tracking_uri(tracking.tracking_uri())  # the client and the run: the same server
    client = mlflow.MlflowClient()
    # Decide before logging anything: a misnamed metric fails here, not after a large upload.
    champion = current_champion(client, params.model_name)
    decision = decide(candidate, champion, base, params, paired)
    report.rows_in = 1
    with tracking.start_run(EXPERIMENT, run_id=_run_id_for(card, client), run_name="register") as active:
        info = log_model(path)
        all_tags = {**version_tags(candidate, base, card, str(eval_dir), tags),
                         "visalign.alias": decision.alias, "visalign.reference": decision.reference,
                         "visalign.reasons": "\n".join(decision.reasons)}
        version = mlflow.register_model(info.model_uri, params.model_name, tags=all_tags)
        client.set_registered_model_alias(params.model_name, decision.alias, version.version)
        mlflow.set_tags({"visalign.registered_model": params.model_name,
                         "visalign.registered_version": version.version, "visalign.alias": decision.alias})
        mlflow.log_text("\n".join(decision.reasons) + "\n", "register/decision.txt")
        run_id = active.info.run_id
    for reason in decision.reasons:
        log.info("register: %s", reason)
    report.rows_out = 1
    report.extra.update(model=params.model_name, version=version.version, alias=decision.alias,
                        reference=decision.reference, reasons=decision.reasons, promoted=decision.promoted,
                        model_uri=f"models:/{params.model_name}/{version.version}", source=str(model_dir),
                        mlflow_run_id=run_id)
    report.write(output_dir)
    return report


def configure_parser(parser: argparse.ArgumentParser) -> None:
    from visalign import recipes

    parser.add_argument("--model", required=True, help="The aligned model directory or s3:// URI (train's output).")
    parser.add_argument("--eval", required=True, dest="eval_dir", help="Evaluate's output directory (results.json).")
    parser.add_argument("--output", required=True, help="Output directory for report.json.")
    recipes.add_arguments(parser, "register")


def cli(args: argparse.Namespace) -> int:
    from visalign import recipes

    recipe = recipes.recipe_from_args(args, "register")
    run(model_dir=args.model, eval_dir=args.eval_dir, output_dir=args.output, params=recipe.register)
    return 0
