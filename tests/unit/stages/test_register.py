"""The promotion gate (a pure function) and the pyfunc wrapper the registry serves."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from visalign import schema
from visalign.recipes import RegisterParams
from visalign.stages import register
from visalign.stages.register import CHALLENGER, CHAMPION, MetricNotFound, decide

# The point-value gate (require_significance off); the paired gate is tested below on constructed predictions.
PARAMS = RegisterParams(model_name="m", target_metric="pope/f1", guard_metrics=("mc/accuracy",),
                        max_guard_drop=0.01, min_improvement=0.005, require_significance=False)
POINT = {"require_significance": False}


def metrics(f1: float, acc: float = 0.5) -> dict:
    return {"pope": {"f1": f1, "accuracy": 0.7, "random/f1": f1}, "mc": {"accuracy": acc}}


def test_promotes_over_base_when_target_improves_and_guards_hold():
    d = decide(metrics(0.80, 0.50), None, metrics(0.70, 0.50), PARAMS)
    assert d.alias == CHAMPION and d.promoted and d.reference == "base"
    assert "candidate 0.8000 vs base 0.7000, gain +0.1000" in d.reasons[0]
    assert "mc/accuracy" in d.reasons[1] and "holds" in d.reasons[1]
    assert d.reasons[-1] == "decision: champion (compared with base, by point values)"


def test_a_gain_at_or_below_min_improvement_is_not_enough():
    assert decide(metrics(0.704), None, metrics(0.70), PARAMS).alias == CHALLENGER
    assert decide(metrics(0.705), None, metrics(0.70), PARAMS).alias == CHALLENGER  # equal: not "more than"
    assert decide(metrics(0.706), None, metrics(0.70), PARAMS).alias == CHAMPION
    d = decide(metrics(0.70), None, metrics(0.70), RegisterParams(target_metric="pope/f1", **POINT))
    assert d.alias == CHALLENGER and "does not improve enough" in d.reasons[0]


def test_a_guard_drop_beyond_the_allowance_blocks_promotion():
    d = decide(metrics(0.90, acc=0.48), None, metrics(0.70, acc=0.50), PARAMS)
    assert d.alias == CHALLENGER
    assert "guard mc/accuracy: candidate 0.4800 vs base 0.5000, drop +0.0200 > max_guard_drop 0.0100" in d.reasons[1]
    # exactly the allowance (0.80 - 0.79 is 0.010000000000000009 in floating point) still holds
    assert decide(metrics(0.90, acc=0.79), None, metrics(0.70, acc=0.80), PARAMS).alias == CHAMPION


def test_compares_with_the_champion_when_there_is_one():
    champion = {"version": "3", "metrics": metrics(0.85)}
    d = decide(metrics(0.80), champion, metrics(0.70), PARAMS)  # beats base, not the champion
    assert d.alias == CHALLENGER and d.reference == "champion v3"
    assert "vs champion v3 0.8500" in d.reasons[0]
    assert decide(metrics(0.90), champion, metrics(0.70), PARAMS).alias == CHAMPION


def test_category_metrics_can_be_the_target():
    params = RegisterParams(target_metric="pope/random/f1", **POINT)
    assert decide(metrics(0.8), None, metrics(0.7), params).alias == CHAMPION


def test_a_missing_metric_names_the_metric_and_the_ones_available():
    with pytest.raises(MetricNotFound, match=r"'pope/recall'.*candidate.*available: \['mc/accuracy', 'pope/accuracy'"):
        decide(metrics(0.8), None, metrics(0.7), RegisterParams(target_metric="pope/recall", **POINT))
    with pytest.raises(MetricNotFound, match="'mmbench/accuracy'"):
        decide(metrics(0.8), None, metrics(0.7), RegisterParams(guard_metrics=("mmbench/accuracy",), **POINT))
    with pytest.raises(MetricNotFound, match="champion v2"):
        decide(metrics(0.8), {"version": 2, "metrics": {"mc": {"accuracy": 0.5}}}, metrics(0.7), PARAMS)


def test_read_results_needs_base_and_aligned(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"base": metrics(0.7), "_meta": {}}))
    with pytest.raises(ValueError, match=r"no results for model\(s\) \['aligned'\]; found \['base'\]"):
        register.read_results(str(tmp_path))


def test_version_tags_carry_metrics_and_provenance():
    card = schema.ModelCard(kind="adapter", base="s3://b/base", recipe={"name": "seva", "train": {"beta": 0.1}},
                            data={"pairs": 120, "pairs_digest": "abc"}, mlflow_run_id="r1")
    tags = register.version_tags(metrics(0.8), metrics(0.7), card, "s3://b/eval", {"pipeline": "p1"})
    assert tags["eval.pope/f1"] == "0.8" and tags["eval.pope/random/f1"] == "0.8"
    assert tags["base_eval.pope/f1"] == "0.7"
    assert tags["data.pairs"] == "120" and tags["data.pairs_digest"] == "abc"
    assert tags["visalign.recipe_name"] == "seva" and json.loads(tags["visalign.recipe"])["train"]["beta"] == 0.1
    assert tags["visalign.base_model"] == "s3://b/base" and tags["pipeline"] == "p1"
    assert all(isinstance(v, str) for v in tags.values())


class FakeVersion:
    def __init__(self, version, tags):
        self.version, self.tags = version, tags


class FakeClient:
    """Stands in for MlflowClient's alias lookup only."""

    def __init__(self, version=None, error_code="RESOURCE_DOES_NOT_EXIST"):
        self.version, self.error_code = version, error_code

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import ErrorCode

        if self.version is None:
            raise MlflowException(f"no alias {alias} on {name}", error_code=ErrorCode.Value(self.error_code))
        return self.version


def test_current_champion_reads_metrics_back_from_version_tags():
    tags = register.version_tags(metrics(0.8), metrics(0.7), None, "e", None)
    assert register.current_champion(FakeClient(FakeVersion("4", tags)), "m") == {"version": "4", "metrics": metrics(0.8)}
    assert register.current_champion(FakeClient(None), "m") is None
    with pytest.raises(Exception, match="no alias"):
        register.current_champion(FakeClient(None, error_code="INTERNAL_ERROR"), "m")


def test_the_pyfunc_wrapper_loads_the_directory_and_answers(tmp_path, tiny_model):
    """The logged model works offline: mlflow.pyfunc save + load on the tiny model."""
    import mlflow.pyfunc

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(path), python_model=register.VisalignVLM(),
                             artifacts={register.MODEL_ARTIFACT: str(tiny_model)},
                             pip_requirements=register._requirements())
    model = mlflow.pyfunc.load_model(str(path))
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buf, format="PNG")
    answers = model.predict([{"question": "What colour is the circle?", "images": [base64.b64encode(buf.getvalue()).decode()]},
                             {"question": "How many shapes are there?", "images": []}])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# ---- the paired gate (require_significance), on constructed predictions --------------------------

def _preds(right: list[bool], kind: str) -> list[schema.Prediction]:
    out = []
    for i, r in enumerate(right):
        gold = "yes" if i % 2 == 0 else "no"
        read = gold.capitalize() if r else ("No" if gold == "yes" else "Yes")
        if kind == "mc":
            gold, read = "A", "A" if r else "B"
        out.append(schema.Prediction(index=str(i), question="q", answer=gold, prediction=read, extracted=read,
                                     correct=r, category=("random", "popular", "adversarial")[i % 3]
                                     if kind == "pope" else None))
    return out


def _paired(pope_base, pope_aligned, mc_base, mc_aligned) -> tuple[dict, dict, dict]:
    """Metrics and evaluate's paired comparison, computed as evaluate computes them."""
    from visalign.stages.metrics import benchmark_metrics
    from visalign.stages.significance import paired_comparison

    fns = {"pope": lambda p, g: benchmark_metrics("yes_no", p, split_mean=True),
           "mc": lambda p, g: benchmark_metrics("multiple_choice", p)}
    rows = {"pope": (pope_base, pope_aligned), "mc": (mc_base, mc_aligned)}
    preds = {b: (_preds(x, b), _preds(y, b)) for b, (x, y) in rows.items()}
    base = {b: fns[b](p[0], None) for b, p in preds.items()}
    aligned = {b: fns[b](p[1], None) for b, p in preds.items()}
    paired = {"confidence": 0.95, "benchmarks": {b: paired_comparison(fns[b], *p, samples=400) for b, p in preds.items()}}
    return aligned, base, paired


def _flip(right: list[bool], to: bool, count: int, start: int = 0) -> list[bool]:
    out, done = list(right), 0
    for i in range(start, len(out)):
        if out[i] != to and done < count:
            out[i], done = to, done + 1
    return out


BASE_ROWS = [(i * 7) % 10 < 6 for i in range(1200)]  # 60% right, spread over the splits
SIG = RegisterParams(model_name="m", target_metric="pope/f1", guard_metrics=("mc/accuracy",), max_guard_drop=0.01)


def test_a_clear_gain_with_steady_guards_is_promoted_and_the_card_says_why():
    aligned, base, paired = _paired(BASE_ROWS, _flip(BASE_ROWS, True, 150), BASE_ROWS[:600],
                                    _flip(_flip(BASE_ROWS[:600], False, 6), True, 5, 300))
    d = decide(aligned, None, base, SIG, paired)
    assert d.alias == CHAMPION, d.reasons
    assert "target pope/f1 vs base, paired: difference +" in d.reasons[1] and "a gain beyond chance" in d.reasons[1]
    assert "guard mc/accuracy" in d.reasons[2] and "holds" in d.reasons[2]  # a 1-row drop is noise
    assert d.reasons[-1] == "decision: champion (compared with base, by paired intervals)"


def test_a_gain_within_chance_stays_challenger_though_its_point_value_is_higher():
    noisy = _flip(_flip(BASE_ROWS, True, 14), False, 8, 600)  # +6 rows of 1200
    aligned, base, paired = _paired(BASE_ROWS, noisy, BASE_ROWS[:600], BASE_ROWS[:600])
    assert aligned["pope"]["f1"] > base["pope"]["f1"]
    assert decide(aligned, None, base, RegisterParams(**{**SIG.__dict__, "require_significance": False})).promoted
    d = decide(aligned, None, base, SIG, paired)
    assert d.alias == CHALLENGER and "not distinguishable from chance" in d.reasons[1]


def test_a_guard_drop_beyond_chance_and_the_allowance_blocks_promotion():
    aligned, base, paired = _paired(BASE_ROWS, _flip(BASE_ROWS, True, 150), BASE_ROWS[:600],
                                    _flip(BASE_ROWS[:600], False, 120))
    d = decide(aligned, None, base, SIG, paired)
    assert d.alias == CHALLENGER and "drops beyond chance" in d.reasons[2]


def test_the_paired_gate_needs_evaluates_comparison():
    aligned, base, _ = _paired(BASE_ROWS, BASE_ROWS, BASE_ROWS[:60], BASE_ROWS[:60])
    with pytest.raises(MetricNotFound, match="significance_samples > 0"):
        decide(aligned, None, base, SIG, None)


def test_read_results_returns_the_candidates_paired_comparison(tmp_path):
    paired = {"reference": "base", "confidence": 0.9, "models": {"aligned": {"pope": {"f1": {"low": 0.1}}}}}
    (tmp_path / "results.json").write_text(json.dumps({"base": metrics(0.7), "aligned": metrics(0.8),
                                                       "_paired": paired}))
    assert register.read_results(str(tmp_path))[2] == {"confidence": 0.9, "benchmarks": {"pope": {"f1": {"low": 0.1}}}}
