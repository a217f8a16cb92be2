"""The whole `seva` pipeline through kfp.local on a small slice, against the real local stack."""

import json

import pytest
from visalign_pipelines.local import STAGE_TASKS, find_output, run_pipeline, stage_reports

pytestmark = [pytest.mark.integration, pytest.mark.pipeline, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_inputs(toy_slice):
    return toy_slice("pipeline-test", seeds="llava.json", benchmarks=["toy_pope.tsv", "toy_mc.tsv"])


def test_seva_pipeline_runs_end_to_end(s3_inputs, tmp_path):
    overrides = {"sample.num_prompts": 16, "evaluate.limit": 12, "rollout.max_new_tokens": 4,
                 "register.model_name": "pipeline-test-seva", "augment.diffusion_step": 999}
    run_dir = run_pipeline("seva", {**s3_inputs, "profile": "toy", "overrides": overrides,
                                    "experiment": "pipeline-test"}, tmp_path / "runs")
    reports = stage_reports(run_dir)
    assert list(reports) == list(STAGE_TASKS.values())  # every stage ran and reported, in order
    assert reports["sample"]["rows_out"] == 16
    assert reports["rollout"]["responses"] == 32  # clean + augmented per prompt
    assert reports["filter"]["rows_in"] == 16
    assert reports["train"]["rows_in"] == reports["filter"]["rows_out"] > 0
    results = json.loads((find_output(run_dir, "evaluate", "results") / "results.json").read_text())
    assert set(results["base"]) == set(results["aligned"]) == {"toy_pope", "toy_mc"}
    assert 0 <= results["aligned"]["toy_pope"]["f1"] <= 1
    comparison = find_output(run_dir, "evaluate", "comparison").read_text()  # the step's Markdown in the UI
    assert comparison.startswith("# Evaluation") and "| toy_pope | f1 |" in comparison and "aligned - base" in comparison
    register = reports["register"]
    assert register["alias"] in ("champion", "challenger") and register["version"]

    import mlflow

    version = mlflow.MlflowClient().get_model_version("pipeline-test-seva", str(register["version"]))
    assert version.tags  # provenance travels with the registered version
