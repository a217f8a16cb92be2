"""charts/visalign rendered by the Helm library (helm-python-sdk), offline: linted strict, every
object validated against the Kubernetes 1.33 schemas, and the chart's house rules checked."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import helm_python
import kubernetes_validate
import pytest
import yaml
from deploy_support import KUBE_VERSION
from visalign_pipelines import settings

from fresh_process import compile_fresh

CHART = Path(__file__).resolve().parents[2] / "charts" / "visalign"
GPU_S3 = yaml.safe_load((CHART / "ci" / "gpu-external-s3-values.yaml").read_text())
VALUE_SETS = {"default": {}, "gpu-external-s3": GPU_S3}
POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def render(values: dict, namespace: str = "visalign") -> dict[str, list[dict]]:
    out = helm_python.Chart.load(CHART).render(values, name="visalign", namespace=namespace)
    return {path: [d for d in yaml.safe_load_all(text) if d] for path, text in out.items()
            if not path.endswith("NOTES.txt")}


def objects(values: dict) -> list[dict]:
    return [d for docs in render(values).values() for d in docs]


def pod_spec(obj: dict) -> dict:
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request):
    return request.param, objects(VALUE_SETS[request.param])


def test_lint_is_clean_in_strict_mode():
    for name, values in VALUE_SETS.items():
        report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}", namespace="visalign")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not problems, (name, problems)


def test_every_object_is_valid_kubernetes_1_33(rendered):
    name, objs = rendered
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_object_counts():
    counts = {name: len(objects(values)) for name, values in VALUE_SETS.items()}
    # default: MinIO (PVC, Deployment, Service), PostgreSQL (Secret, StatefulSet, Service), MLflow
    # (Deployment, Service), object-store Secret, SA, pipeline settings, bucket + upload Jobs, test
    # Pod, and in the run namespace Secret, endpoints, kfp-launcher, SA, Role, RoleBinding, PVC
    assert counts == {"default": 21, "gpu-external-s3": 12}


def test_one_resource_per_template():
    for values in VALUE_SETS.values():
        for path, docs in render(values).items():
            assert len(docs) <= 1, path


def test_pods_are_locked_down_with_requests_and_limits(rendered):
    name, objs = rendered
    for obj in (o for o in objs if o["kind"] in POD_KINDS):
        spec = pod_spec(obj)
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["privileged"] is False, where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and \
                {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            assert "@sha256:" in c["image"] or re.search(r":[\w.-]+$", c["image"]), where  # never :latest-less


def test_selectors_use_only_name_and_instance(rendered):
    _, objs = rendered
    for obj in objs:
        selector = None
        if obj["kind"] in ("Deployment", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            assert selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        elif obj["kind"] == "Service":
            selector = obj["spec"]["selector"]
        if selector is not None:
            assert set(selector) == {"app.kubernetes.io/name", "app.kubernetes.io/instance"}, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_every_value_has_a_doc_comment_and_the_schema_is_closed():
    lines = (CHART / "values.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_][\w.-]*:", line) and not line.lstrip().startswith("#"):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("# --") or (above.startswith("#") and not above.startswith("# --") and any(
                lines[j].strip().startswith("# --") for j in range(max(0, i - 4), i))), f"values.yaml:{i + 1}: {line}"

    def walk(node, where):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, where
            for k, v in node.items():
                walk(v, f"{where}.{k}")

    schema = json.loads((CHART / "values.schema.json").read_text())
    walk(schema, "$")
    report = helm_python.lint(CHART, {"objectStore": {"bucket": "visalign", "buckett": "x"}}, strict=True)
    assert any("buckett" in e for e in report["errors"])


@pytest.mark.parametrize("values, path", [
    ({"objectStore": {"mode": "external", "auth": {"existingSecret": "s"}}}, "objectStore.external.endpoint"),
    ({"objectStore": {"mode": "external", "external": {"endpoint": "https://s3.example"}}},
     "objectStore.auth.existingSecret"),
    ({"mlflow": {"database": {"mode": "external", "existingSecret": "db"}}}, "mlflow.database.external.host"),
    ({"mlflow": {"database": {"mode": "external", "external": {"host": "db"}}}}, "mlflow.database.existingSecret"),
    ({"objectStore": {"auth": {"existingSecret": "mine"}}}, "pipelines.createRunSecret"),
])
def test_misconfiguration_fails_naming_the_values_path(values, path):
    with pytest.raises(helm_python.HelmError, match=re.escape(path)):
        render(values)


def test_generated_credentials_are_shared_by_both_namespaces_and_appear_only_in_secrets():
    objs = objects({})
    secrets = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "Secret"}
    release, run = secrets[("visalign", "visalign-s3")], secrets[("kubeflow", "visalign-s3")]
    assert release["data"] == run["data"]
    key = base64.b64decode(release["data"]["AWS_SECRET_ACCESS_KEY"]).decode()
    assert len(key) == 40
    others = json.dumps([o for o in objs if o["kind"] != "Secret"])
    assert key not in others and release["data"]["AWS_SECRET_ACCESS_KEY"] not in others


def test_run_namespace_objects_match_the_names_compiled_into_the_pipelines():
    objs = {(o["kind"], o["metadata"]["name"]): o for o in objects({}) if o["metadata"]["namespace"] == "kubeflow"}
    s = settings.Secrets()
    endpoints = objs[("ConfigMap", s.endpoints_config_map)]["data"]
    assert set(endpoints) == {*s.s3_endpoint_keys, *s.mlflow_endpoint_keys}
    assert set(objs[("Secret", s.s3_secret)]["data"]) == set(s.s3_keys)
    assert ("PersistentVolumeClaim", settings.Workspace().pvc) in objs
    launcher = objs[("ConfigMap", "kfp-launcher")]["data"]
    assert launcher["defaultPipelineRoot"] == "s3://visalign/pipelines"
    provider = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert provider["endpoint"] == "visalign-minio.visalign.svc.cluster.local:9000" and provider["disableSSL"] is True
    assert provider["credentials"]["secretRef"] == {"secretName": s.s3_secret, "accessKeyKey": "AWS_ACCESS_KEY_ID",
                                                    "secretKeyKey": "AWS_SECRET_ACCESS_KEY"}
    role = objs[("Role", "visalign-trainjobs")]["rules"][0]
    assert role["apiGroups"] == ["trainer.kubeflow.org"] and role["resources"] == ["trainjobs"]
    assert {"create", "get", "watch", "delete"} <= set(role["verbs"])
    subjects = {s["name"] for s in objs[("RoleBinding", "visalign-trainjobs")]["subjects"]}
    assert subjects == {"visalign-runner", "pipeline-runner", "default-editor"}


def test_hooks_upload_the_pipelines_and_test_mlflow_and_the_object_store():
    objs = {o["metadata"]["name"]: o for o in objects({})}
    upload = objs["visalign-upload"]
    assert upload["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = upload["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["visalign", "upload"] and "--compile" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VISALIGN_IMAGE"] == "ghcr.io/visalign/visalign-cuda:0.1.0"
    bucket = objs["visalign-bucket"]
    assert int(bucket["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(upload["metadata"]["annotations"]["helm.sh/hook-weight"])
    test = objs["visalign-test-services"]
    assert test["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test["spec"]["containers"][0]["command"][2]
    assert "/health" in script and "store.write_text" in script
    compile(script, "helm-test", "exec")  # the probe is valid Python


def test_the_gpu_values_compile_into_the_pipelines(tmp_path):
    """The chart's settings ConfigMap is what the upload Job compiles with: check the IR it yields."""
    objs = {o["metadata"]["name"]: o for o in objects(GPU_S3)}
    (tmp_path / "cluster.yaml").write_text(objs["visalign-pipeline-settings"]["data"]["cluster.yaml"])
    cs = settings.cluster_settings(tmp_path / "cluster.yaml")
    assert cs.pools["train"].accelerator_limit == 8 and cs.train_launcher == "trainjob"
    # @dsl.pipeline builds the graph at import: the settings are read then, as in the upload Job's process
    spec, platform = compile_fresh(tmp_path / "ir", {settings.SETTINGS_ENV: str(tmp_path / "cluster.yaml")})["seva"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-rollout"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-train"]["container"].get("resources", {})
    env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"]["exec-train"]["container"]["env"]}
    job = json.loads(env["VISALIGN_TRAINJOB"])
    assert job["always"] is True and job["gpus_per_node"] == 8 and job["node_selector"]["pool"] == "train-8x"
    assert job["shm_size"] == "64Gi"
