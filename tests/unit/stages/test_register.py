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

PARAMS = RegisterParams(model_name="m", target_metric="pope/f1", guard_metrics=("mc/accuracy",),
                        max_guard_drop=0.01, min_improvement=0.005)


def metrics(f1: float, acc: float = 0.5) -> dict:
    return {"pope": {"f1": f1, "accuracy": 0.7, "random/f1": f1}, "mc": {"accuracy": acc}}


def test_promotes_over_base_when_target_improves_and_guards_hold():
    d = decide(metrics(0.80, 0.50), None, metrics(0.70, 0.50), PARAMS)
    assert d.alias == CHAMPION and d.promoted and d.reference == "base"
    assert "candidate 0.8000 vs base 0.7000, gain +0.1000" in d.reasons[0]
    assert "mc/accuracy" in d.reasons[1] and "holds" in d.reasons[1]
    assert d.reasons[-1] == "decision: champion (compared with base)"


def test_a_gain_at_or_below_min_improvement_is_not_enough():
    assert decide(metrics(0.704), None, metrics(0.70), PARAMS).alias == CHALLENGER
    assert decide(metrics(0.705), None, metrics(0.70), PARAMS).alias == CHALLENGER  # equal: not "more than"
    assert decide(metrics(0.706), None, metrics(0.70), PARAMS).alias == CHAMPION
    d = decide(metrics(0.70), None, metrics(0.70), RegisterParams(target_metric="pope/f1"))
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
    params = RegisterParams(target_metric="pope/random/f1")
    assert decide(metrics(0.8), None, metrics(0.7), params).alias == CHAMPION


def test_a_missing_metric_names_the_metric_and_the_ones_available():
    with pytest.raises(MetricNotFound, match=r"'pope/recall'.*candidate.*available: \['mc/accuracy', 'pope/accuracy'"):
        decide(metrics(0.8), None, metrics(0.7), RegisterParams(target_metric="pope/recall"))
    with pytest.raises(MetricNotFound, match="'mmbench/accuracy'"):
        decide(metrics(0.8), None, metrics(0.7), RegisterParams(guard_metrics=("mmbench/accuracy",)))
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
