"""visalign.infra.tracking against the session's real MLflow server (artifacts proxied to SeaweedFS)."""

from __future__ import annotations

import logging
import uuid

import mlflow
import pytest
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from visalign.infra import store, tracking


def test_flatten_and_metric_keys():
    assert tracking.flatten({"train": {"beta": 0.1, "lora": {"r": 8}}, "seed": 0, "empty": {}}) == {
        "train.beta": 0.1, "train.lora.r": 8, "seed": 0, "empty": {}}
    assert tracking.metric_key("", "pope", "f1") == "pope/f1"
    assert tracking.metric_key("eval/", "pope", "f1") == "eval/pope/f1"


def test_tracking_uri_falls_back_to_a_local_store_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="visalign.infra.tracking"):
        # SQLite, not ./mlruns: MLflow 3 refuses the file store and the registry needs a database.
        assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert "MLFLOW_TRACKING_URI is not set" in caplog.text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert tracking.tracking_uri() == "http://127.0.0.1:1"


@pytest.mark.integration
def test_a_run_with_params_metrics_and_a_resume(stack):
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    params = {"train": {"beta": 0.1, "loss_type": ["sigmoid", "sft"]}, "long": "x" * (MAX_PARAM_VAL_LENGTH + 50),
              "many": {f"p{i}": i for i in range(150)}}  # more than one MLflow batch (100)
    with tracking.start_run(experiment, run_name="train-seva", tags={"recipe": "seva"}) as run:
        logged = tracking.log_params_flat(params)
        tracking.log_metrics_prefixed({"pope": {"f1": 0.8, "acc": 0.75}, "mme": {"score": 1500}}, prefix="eval")
        run_id = run.info.run_id
    assert mlflow.get_tracking_uri() == stack.env["MLFLOW_TRACKING_URI"]

    client = mlflow.MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    got = client.get_run(run_id)
    assert client.get_experiment(got.info.experiment_id).name == experiment
    assert got.info.run_name == "train-seva" and got.info.status == "FINISHED"
    assert got.data.tags["recipe"] == "seva"
    assert got.data.params["train.beta"] == "0.1"
    assert got.data.params["train.loss_type"] == "['sigmoid', 'sft']"
    assert len(got.data.params["long"]) == MAX_PARAM_VAL_LENGTH and got.data.params["long"].endswith("[truncated]")
    assert got.data.params["many.p149"] == "149" and len(got.data.params) == len(logged) == 153
    assert got.data.metrics == {"eval/pope/f1": 0.8, "eval/pope/acc": 0.75, "eval/mme/score": 1500.0}

    # A retried step resumes its run instead of starting another.
    with tracking.start_run(experiment, run_name="ignored", run_id=run_id, tags={"attempt": "2"}) as again:
        assert again.info.run_id == run_id
        tracking.log_metrics_prefixed({"pope": {"f1": 0.85}}, step=1)
    got = client.get_run(run_id)
    assert got.data.metrics["pope/f1"] == 0.85 and got.data.tags["attempt"] == "2"
    assert len(client.search_runs([got.info.experiment_id])) == 1


@pytest.mark.integration
def test_a_failing_body_marks_the_run_failed(stack):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.start_run(f"test-{uuid.uuid4().hex[:8]}", run_name="broken") as run:
            raise RuntimeError("boom")
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FAILED"
    assert mlflow.active_run() is None


@pytest.mark.integration
def test_an_artifact_goes_through_the_proxy_into_the_bucket(stack):
    with tracking.start_run(f"test-{uuid.uuid4().hex[:8]}", run_name="artifacts") as run:
        mlflow.log_text("hello from the run", "notes/hello.txt")
        run_id = run.info.run_id
    # The client only spoke HTTP to MLflow; the object must now be in the S3 bucket.
    uris = [u for u in store.list_uris(f"s3://{stack.settings.bucket}/mlflow") if run_id in u]
    assert len(uris) == 1 and uris[0].endswith(f"{run_id}/artifacts/notes/hello.txt")
    assert store.read_text(uris[0]) == "hello from the run"
    # And it reads back through the tracking server.
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt") == "hello from the run"
