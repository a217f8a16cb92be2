"""The whole `mia-dpo` pipeline through kfp.local on a small slice, against the real local stack."""

import json

import pytest
from visalign_pipelines.local import PIPELINE_TASKS, find_output, run_pipeline, stage_reports

pytestmark = [pytest.mark.integration, pytest.mark.pipeline, pytest.mark.slow]


@pytest.fixture(scope="module")
def s3_inputs(toy_slice):
    return toy_slice("pipeline-test-mia", seeds="llava.json", benchmarks=["toy_pope.tsv", "toy_multi_seq.tsv"],
                     num_seed_images=16)


def test_mia_dpo_pipeline_runs_end_to_end(s3_inputs, tmp_path):
    overrides = {"sample.num_prompts": 16, "evaluate.limit": 8, "rollout.max_new_tokens": 4,
                 "compose.mix": "1,1,1", "compose.grid_layouts": "1x2,2x2", "select.max_length_ratio": "none",
                 "register.model_name": "pipeline-test-mia", "register.target_metric": "toy_multi_seq/accuracy"}
    run_dir = run_pipeline("mia-dpo", {**s3_inputs, "profile": "toy", "overrides": overrides,
                                       "experiment": "pipeline-test-mia"}, tmp_path / "runs")
    reports = stage_reports(run_dir)
    assert list(reports) == list(PIPELINE_TASKS["mia-dpo"].values())  # every stage ran and reported, in order
    assert reports["sample"]["rows_out"] == 16
    assert reports["compose"]["rows_out"] == 16 and set(reports["compose"]["formats"]) == {
        "sequence", "grid", "pic_in_pic"}
    assert reports["rollout"]["responses"] == 16
    select = reports["select"]
    assert select["rows_in"] == 16 and sum(d["n"] for d in select["ratios"].values()) == 16
    assert reports["train"]["rows_in"] == select["rows_out"] > 0
    assert (find_output(run_dir, "select-pairs", "ratio_histogram").read_text()).startswith("<p>pairs kept")
    results = json.loads((find_output(run_dir, "evaluate", "results") / "results.json").read_text())
    assert set(results["aligned"]) == {"toy_pope", "toy_multi_seq"}
    assert reports["register"]["alias"] in ("champion", "challenger")

    import mlflow

    run = mlflow.get_run(select["mlflow_run_id"])
    assert "select/pairs" in run.data.metrics
    artifacts = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "select")]
    assert "select/ratio_histogram.png" in artifacts
