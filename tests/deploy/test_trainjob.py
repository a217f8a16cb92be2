"""Multi-node training: the TrainJob manifest against the Trainer CRD's schema, and the step's
control flow (create, poll Pending/Running -> Complete/Failed, deadline, delete) against
TrainJobApiStandIn, a local HTTP stand-in of the Kubernetes API on 127.0.0.1 (conftest.py)."""

from __future__ import annotations

import json
import logging

import jsonschema
import pytest
import yaml
from deploy_support import status_for, trainjob_validator, validate_trainjob

from visalign import recipes
from visalign.infra import trainjob
from visalign.infra.trainjob import JobConfig, TrainJobError
from visalign.stages import train_node

CONFIG = JobConfig(
    image="registry.example/visalign-cuda@sha256:" + "1" * 64, gpus_per_node=8,
    node_selector={"nvidia.com/gpu.present": "true", "node.kubernetes.io/instance-type": "p5.48xlarge"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    env_secrets={"AWS_ACCESS_KEY_ID": ("visalign-s3", "AWS_ACCESS_KEY_ID", False),
                 "MLFLOW_TRACKING_PASSWORD": ("visalign-mlflow", "MLFLOW_TRACKING_PASSWORD", True)},
    env_config_maps={"AWS_ENDPOINT_URL": ("visalign-endpoints", "AWS_ENDPOINT_URL")},
    workspace_pvc="visalign-workspace", poll_seconds=0.01)


def _body(name="visalign-train-0123456789ab", nodes=4, config=CONFIG):
    return trainjob.manifest(name=name, namespace="kubeflow", config=config, num_nodes=nodes,
                             args=["--pairs", "s3://b/pairs", "--model", "s3://b/m"])


def test_manifest_is_valid_against_the_trainjob_crd_schema():
    body = _body()
    validate_trainjob(body)
    spec = body["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-distributed"}
    assert spec["trainer"]["image"] == CONFIG.image and spec["trainer"]["numNodes"] == 4
    assert spec["trainer"]["numProcPerNode"] == 8
    assert spec["trainer"]["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": 8}
    assert spec["trainer"]["command"][:3] == ["torchrun", "-m", "visalign.stages.train_node"]
    pod = spec["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert pod["name"] == "node"
    pod = pod["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == CONFIG.node_selector and pod["tolerations"] == CONFIG.tolerations
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["workspace"]["persistentVolumeClaim"]["claimName"] == "visalign-workspace"
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {"/dev/shm", "/workspace"}
    env = {e["name"]: e for e in spec["trainer"]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": "visalign-s3", "key": "AWS_ACCESS_KEY_ID", "optional": False}
    assert all("value" not in e for n, e in env.items() if n.startswith(("AWS_", "MLFLOW_")))


@pytest.mark.parametrize("breakage, rule", [
    (lambda b: b["spec"]["trainer"].update(numNodes="4"), "is not of type 'integer'"),
    (lambda b: b["spec"]["trainer"].update(nodes=4), "Additional properties"),
    (lambda b: b["spec"].pop("runtimeRef"), "'runtimeRef' is a required property"),
    (lambda b: b["spec"]["runtimePatches"][0].pop("manager"), "'manager' is a required property"),
    (lambda b: b["spec"].update(activeDeadlineSeconds=0), "less than the minimum"),
    (lambda b: b["spec"]["trainer"]["env"].append({"value": "x"}), "'name' is a required property"),
])
def test_the_schema_has_teeth(breakage, rule):
    body = _body()
    breakage(body)
    with pytest.raises(jsonschema.ValidationError, match=rule):
        trainjob_validator().validate(body)


def test_list_map_keys_and_name_rules_are_checked():
    body = _body()
    body["spec"]["trainer"]["env"].append(dict(body["spec"]["trainer"]["env"][0]))
    with pytest.raises(AssertionError, match="duplicate list-map keys"):
        validate_trainjob(body)
    with pytest.raises(AssertionError, match="CEL"):
        validate_trainjob(_body(name="Visalign_Train"))


def test_job_names_are_stable_dns_labels():
    a = trainjob.job_name("s3://visalign/pipelines/run-1/train/adapter")
    assert a == trainjob.job_name("s3://visalign/pipelines/run-1/train/adapter")
    assert a != trainjob.job_name("s3://visalign/pipelines/run-2/train/adapter")
    validate_trainjob(_body(name=a))


def test_the_compiled_pipeline_carries_a_valid_trainjob_config():
    """The train step's VISALIGN_TRAINJOB (compile-time settings) yields a valid TrainJob."""
    from visalign_pipelines.compile import COMPILED_DIR

    spec = next(yaml.safe_load_all((COMPILED_DIR / "seva.yaml").read_text()))
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]}
    config = JobConfig.from_env({trainjob.ENV: env[trainjob.ENV]})
    assert config.image == spec["deploymentSpec"]["executors"]["exec-train"]["container"]["image"]
    assert config.workspace_pvc == "visalign-workspace"
    validate_trainjob(_body(config=config))


def test_success_polls_to_complete_logs_progress_and_deletes(trainjob_api, caplog):
    api = trainjob_api([status_for("Pending"), status_for("Running"), status_for("Running", progress=50),
                        status_for("Complete", progress=100)])
    caplog.set_level(logging.INFO, "visalign.infra.trainjob")
    job = trainjob.submit_and_wait(api.api(), _body(), deadline_seconds=30, poll_seconds=0.01)
    assert trainjob.job_state(job)[0] == "Complete"
    assert len(api.created) == 1 and not api.jobs
    ns, name, query, body = api.deleted[0]
    assert (ns, name) == ("kubeflow", "visalign-train-0123456789ab")
    assert body.get("propagationPolicy") == "Foreground" or query.get("propagationPolicy") == ["Foreground"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("Pending" in line for line in lines) and any("50%" in line and "loss=0.42" in line for line in lines)
    assert any("deleted" in line for line in lines)


def test_a_failed_job_fails_the_step_with_its_reason_and_is_deleted(trainjob_api):
    api = trainjob_api([status_for("Running"), status_for("Failed", "BackoffLimitExceeded", "node-1 exited with 1")])
    with pytest.raises(TrainJobError, match="BackoffLimitExceeded: node-1 exited with 1"):
        trainjob.submit_and_wait(api.api(), _body(), deadline_seconds=30, poll_seconds=0.01)
    assert not api.jobs and len(api.deleted) == 1


def test_the_deadline_fails_the_step_and_deletes_the_job(trainjob_api):
    api = trainjob_api([status_for("Running")] * 1000)
    with pytest.raises(TrainJobError, match="did not finish within"):
        trainjob.submit_and_wait(api.api(), _body(), deadline_seconds=0.2, poll_seconds=0.02)
    assert not api.jobs and len(api.deleted) == 1


def test_a_retried_step_adopts_its_job_and_api_hiccups_are_retried(trainjob_api):
    api = trainjob_api([status_for("Running"), status_for("Complete")])
    client = api.api()
    client.create_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION, "kubeflow", trainjob.PLURAL, _body())
    api.fail_gets = 2
    trainjob.submit_and_wait(client, _body(), deadline_seconds=30, poll_seconds=0.01)
    assert len(api.created) == 1 and not api.jobs


def test_an_invalid_body_is_refused_like_the_api_server_would(trainjob_api):
    api = trainjob_api([])
    body = _body()
    body["spec"]["trainer"]["numNodes"] = "many"
    with pytest.raises(TrainJobError, match=r"create failed \(422\)"):
        trainjob.submit_and_wait(api.api(), body, deadline_seconds=1, poll_seconds=0.01)


def test_step_run_downloads_the_adapter_and_records_the_job(trainjob_api, tmp_path, monkeypatch):
    api = trainjob_api([status_for("Running"), status_for("Complete")])
    staged = {}

    def fake_download(uri, local):  # what rank 0 uploaded to the staging prefix
        staged["uri"] = uri
        (tmp_path / "out" / "report.json").write_text(json.dumps({"stage": "train", "extra": {}}))

    monkeypatch.setattr("visalign.infra.store.download_dir", fake_download)
    (tmp_path / "out").mkdir()
    recipe = recipes.load("seva", "paper", {"train.num_nodes": 2})
    report = trainjob.run(pairs_uri="minio://mlpipeline/v2/run/filter/pairs", model="s3://visalign/models/base",
                          output_dir=str(tmp_path / "out"), output_uri="minio://mlpipeline/v2/run/train/adapter",
                          recipe=recipe, profile="paper", overrides={"train.num_nodes": 2}, experiment="e",
                          config=CONFIG, api=api.api(), namespace="kubeflow")
    args = api.created[0]["spec"]["trainer"]["args"]
    assert args[args.index("--pairs") + 1] == "s3://mlpipeline/v2/run/filter/pairs"
    assert staged["uri"] == "s3://mlpipeline/v2/run/train/adapter.trainjob" == args[args.index("--output-uri") + 1]
    assert report["extra"]["trainjob"]["nodes"] == 2 and not api.jobs


def test_without_cluster_settings_multi_node_says_where_it_runs(monkeypatch):
    monkeypatch.delenv(trainjob.ENV, raising=False)
    recipe = recipes.load("seva", "paper", {"train.num_nodes": 2})
    with pytest.raises(TrainJobError, match="train.num_nodes=2"):
        trainjob.run(pairs_uri="s3://b/p", model="s3://b/m", output_dir="/tmp/x", output_uri="s3://b/o",
                     recipe=recipe, profile="paper", overrides={}, experiment="e")


def test_num_nodes_is_a_validated_recipe_field():
    assert trainjob.wanted(recipes.load("seva").train.num_nodes, None) is False
    assert trainjob.wanted(1, JobConfig(image="i", always=True)) is True
    with pytest.raises(recipes.ConfigError, match="train.num_nodes=0"):
        recipes.load("seva", "paper", {"train.num_nodes": 0})
    assert "TrainJob" in recipes.TrainParams.__dataclass_fields__["num_nodes"].metadata["help"]


def test_checkpoints_go_to_the_workspace_one_folder_per_output(monkeypatch, tmp_path):
    params = recipes.load("seva").train
    monkeypatch.delenv("VISALIGN_WORKSPACE", raising=False)
    assert trainjob.checkpoint_params(params, "s3://a").checkpoint_dir is None
    monkeypatch.setenv("VISALIGN_WORKSPACE", str(tmp_path / "not-mounted"))  # kfp.local: env but no volume
    assert trainjob.checkpoint_params(params, "s3://a").checkpoint_dir is None
    monkeypatch.setenv("VISALIGN_WORKSPACE", str(tmp_path))
    a, b = trainjob.checkpoint_params(params, "s3://a"), trainjob.checkpoint_params(params, "s3://b")
    assert a.checkpoint_dir.startswith(f"{tmp_path}/checkpoints/") and a.checkpoint_dir != b.checkpoint_dir
    pinned = recipes.load("seva", "paper", {"train.checkpoint_dir": "/mnt/ckpt"}).train
    assert trainjob.checkpoint_params(pinned, "s3://a").checkpoint_dir == "/mnt/ckpt"


def test_worker_uploads_from_rank_0_only_and_other_ranks_keep_off_the_tracking_server(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("visalign.infra.store.local_path", lambda uri, cache_dir=None: tmp_path)
    monkeypatch.setattr("visalign.infra.store.upload_dir", lambda local, uri: calls.append(("upload", uri)))
    monkeypatch.setattr("visalign.stages.train.run", lambda **kw: calls.append(("train", kw["params"].num_nodes)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    argv = ["--pairs", "s3://b/p", "--model", "s3://b/m", "--output-uri", "s3://b/o", "--recipe", "seva",
            "--profile", "toy", "--experiment", "e", "--overrides", json.dumps({"train.num_nodes": 2})]
    monkeypatch.setenv("RANK", "1")
    assert train_node.worker(argv) == 0
    assert calls == [("train", 2)] and not __import__("os").environ["MLFLOW_TRACKING_URI"].startswith("http")
    monkeypatch.setenv("RANK", "0")
    calls.clear()
    train_node.worker(argv)
    assert calls == [("train", 2), ("upload", "s3://b/o")]
