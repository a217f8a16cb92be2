"""The whole `mpo` pipeline through kfp.local on a small slice, against the real local stack."""

import json

import pytest
from visalign_pipelines.local import PIPELINE_TASKS, find_output, run_pipeline, stage_reports

pytestmark = [pytest.mark.integration, pytest.mark.pipeline, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_inputs(toy_slice):
    return toy_slice("pipeline-test-mpo", seeds="steps.json", benchmarks=["toy_steps.tsv", "toy_pope.tsv"],
                     world_seed=5, steps=True)


def test_mpo_pipeline_runs_end_to_end(s3_inputs, tmp_path):
    """An untrained model writes no 'Final answer:' line: every ground-truth question is all-wrong
    (format negatives), so the pairs come from DropoutNTP; the stages must still run and report."""
    overrides = {"sample.num_prompts": 16, "rollout.num_samples": 2, "rollout.max_new_tokens": 12,
                 "pairs.dropout_max_new_tokens": 4, "evaluate.limit": 6, "evaluate.max_new_tokens": 6,
                 "register.model_name": "pipeline-test-mpo"}
    run_dir = run_pipeline("mpo", {**s3_inputs, "profile": "toy", "overrides": overrides,
                                   "experiment": "pipeline-test-mpo"}, tmp_path / "runs")
    reports = stage_reports(run_dir)
    assert list(reports) == list(PIPELINE_TASKS["mpo"].values())  # every stage ran and reported, in order
    assert reports["sample"]["rows_out"] == 16
    roll = reports["rollout"]
    with_ref, without_ref = roll["prompts_with_reference"], roll["prompts_without_reference"]
    assert with_ref > 0 and without_ref > 0 and with_ref + without_ref == 16
    # num_samples (2) per question with a reference; DropoutNTP uses one answer per open question
    assert roll["responses"] == 2 * with_ref + 1 * without_ref and roll["num_samples"] == 2
    pairs = reports["pairs"]
    assert pairs["correctness_questions"] + pairs["dropout_ntp_questions"] + sum(pairs["dropped"].values()) >= 16
    assert pairs["format_negative_rate"] == 1.0 and pairs["difficulty"]["all_wrong"] == pairs["correctness_questions"]
    assert pairs["dropout_ntp_questions"] > 0 and reports["train"]["rows_in"] == pairs["rows_out"] > 0
    results = json.loads((find_output(run_dir, "evaluate", "results") / "results.json").read_text())
    assert set(results["aligned"]) == {"toy_steps", "toy_pope"}
    assert "unextractable" in results["aligned"]["toy_steps"]
    assert reports["register"]["alias"] in ("champion", "challenger")

    import mlflow

    history = mlflow.MlflowClient().get_metric_history(reports["train"]["mlflow_run_id"], "mpo/delta")
    assert history  # MPO's loss parts reach MLflow
