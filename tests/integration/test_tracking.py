"""visalign.infra.tracking against the session's real MLflow server (artifacts proxied to SeaweedFS)."""

from __future__ import annotations

import logging
import uuid

import mlflow
import pytest
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from visalign.errors import StageError
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


# ---- reachability: one quick request of its own, before a stage does any heavy work ------------------

@pytest.fixture
def dead_uri():
    """An http URI of a port bound but not listening: connections are refused (with a password in it)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://alice:s3cret-pw@127.0.0.1:{s.getsockname()[1]}"


def test_check_reachable_fails_fast_naming_the_uri_and_the_fix_but_not_the_password(dead_uri):
    import time

    start = time.monotonic()
    with pytest.raises(tracking.TrackingUnreachable) as caught:
        tracking.check_reachable(dead_uri)
    assert time.monotonic() - start < 5
    message = str(caught.value)
    assert dead_uri.replace("alice:s3cret-pw@", "") in message and "visalign stack up" in message
    assert "visalign stack env" in message and "MLFLOW_TRACKING_URI" in message
    assert "s3cret-pw" not in message and "alice" not in message
    assert isinstance(caught.value, StageError)


def test_check_reachable_times_out_on_a_server_that_never_answers():
    import socket
    import time

    with socket.socket() as s:  # listens (the handshake completes) but never reads or answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        start = time.monotonic()
        with pytest.raises(tracking.TrackingUnreachable, match="imed out"):
            tracking.check_reachable(f"http://127.0.0.1:{s.getsockname()[1]}", timeout_s=1.0)
        assert time.monotonic() - start < 3  # one request, no retries


def test_check_reachable_skips_local_stores(monkeypatch, tmp_path):
    tracking.check_reachable(f"sqlite:///{tmp_path}/mlflow.db")
    tracking.check_reachable("file:///nowhere/mlruns")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.check_reachable()


@pytest.mark.integration
def test_check_reachable_passes_against_the_live_server(stack, monkeypatch):
    uri = stack.env["MLFLOW_TRACKING_URI"]
    tracking.check_reachable()  # MLFLOW_TRACKING_URI, set by the stack fixture
    tracking.check_reachable(uri.rstrip("/") + "/")
    tracking.check_reachable(uri.replace("://", "://bob:pw@"))  # credentials are stripped, not sent as a host
    with pytest.raises(tracking.TrackingUnreachable, match="HTTP 404"):  # a server, but not MLflow's API
        tracking.check_reachable(uri.rstrip("/") + "/no/such/prefix")


def test_stages_fail_fast_before_loading_a_model_when_the_server_is_down(dead_uri, monkeypatch, tmp_path):
    import time

    import visalign.models
    from visalign.recipes import EvaluateParams, RegisterParams, TrainParams
    from visalign.stages import evaluate, register, train

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded although the tracking server is down")

    for name in ("load_model", "load_processor", "local_dir"):
        monkeypatch.setattr(visalign.models, name, no_model)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead_uri)
    stages = {
        "train": lambda: train.run(pairs_dir=str(tmp_path / "pairs"), model="m", output_dir=str(tmp_path / "t"),
                                   params=TrainParams()),
        "evaluate": lambda: evaluate.run(benchmarks=[str(tmp_path / "bench.tsv")], models={"base": "m"},
                                         output_dir=str(tmp_path / "e"), params=EvaluateParams(),
                                         engine_factory=no_model),
        "register": lambda: register.run(model_dir="m", eval_dir=str(tmp_path / "e"), output_dir=str(tmp_path / "r"),
                                         params=RegisterParams()),
    }
    for stage, call in stages.items():
        start = time.monotonic()
        with pytest.raises(tracking.TrackingUnreachable, match="visalign stack up"):
            call()
        assert time.monotonic() - start < 15, stage


def test_evaluate_writes_its_report_even_when_mlflow_logging_fails(monkeypatch, tmp_path):
    import base64
    import csv
    import io
    import json

    from PIL import Image

    from visalign.recipes import EvaluateParams
    from visalign.report import read_report
    from visalign.stages import evaluate
    from visalign.stages.rollout import GenerationResult

    class Yes:
        def generate(self, requests):
            return [GenerationResult(id=r.id, text="red", num_tokens=1, finish_reason="eos") for r in requests]

    def outage(*args, **kwargs):
        raise ConnectionError("the tracking server went away after the check")

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    with open(tmp_path / "toy_short.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["index", "image", "question", "answer"], delimiter="\t")
        writer.writeheader()
        writer.writerow({"index": 0, "image": base64.b64encode(buf.getvalue()).decode(),
                         "question": "What colour is it?", "answer": "red"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setattr(evaluate, "log_to_mlflow", outage)
    with pytest.raises(ConnectionError):
        evaluate.run(benchmarks=[str(tmp_path / "toy_short.tsv")], models={"base": "m"}, output_dir=str(tmp_path / "o"),
                     params=EvaluateParams(), engine_factory=lambda uri, params: Yes())
    assert json.loads((tmp_path / "o" / "results.json").read_text())["base"]["toy_short"]["accuracy"] == 1.0
    report = read_report(tmp_path / "o")
    assert report["predictions"] == 1 and report["mlflow_run_id"] is None
