"""The compiled IR is up to date and carries the cluster settings."""

import pytest
import yaml
from visalign_pipelines import compile as compile_mod
from visalign_pipelines import settings

from fresh_process import compile_fresh


def _load(name):
    docs = list(yaml.safe_load_all((compile_mod.COMPILED_DIR / f"{name}.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_compiled_ir_is_up_to_date(monkeypatch):
    monkeypatch.delenv("VISALIGN_IMAGE", raising=False)
    monkeypatch.delenv(settings.SETTINGS_ENV, raising=False)  # the committed IR uses the default settings
    assert compile_mod.main(["--check"]) == 0, "run `make compile` and commit pipelines/compiled/"


def test_every_component_uses_the_one_image_and_installs_nothing():
    spec, _ = _load("seva")
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == 7
    for name, ex in executors.items():
        assert ex["container"]["image"] == settings.DEFAULT_IMAGE, name
        assert "pip install" not in " ".join(ex["container"]["command"]), name


def test_gpu_settings_only_on_rollout_and_train():
    spec, platform = _load("seva")
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, ex in executors.items() if "accelerator" in ex["container"].get("resources", {})}
    assert gpu == {"exec-rollout", "exec-train"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in gpu:
        cfg = k8s[name]
        assert cfg["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert cfg["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert cfg["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
        assert cfg["emptyDirMounts"][0]["medium"] == "Memory"


def test_image_setting_reaches_the_ir(tmp_path):
    digest = "registry.example/visalign@sha256:" + "0" * 64
    compiled = compile_fresh(tmp_path, {"VISALIGN_IMAGE": digest})
    assert set(compiled) == {"seva", "mpo", "mia-dpo", "ipa"}
    for name, (spec, _) in compiled.items():
        images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
        assert images == {digest}, name


def test_pipeline_parameters_have_documented_defaults():
    from visalign import recipes

    spec, _ = _load("seva")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"seeds", "benchmarks", "base_model", "profile", "overrides", "experiment"} <= set(params)
    assert params["profile"]["defaultValue"] in recipes.PROFILES


# ---- cluster settings, for every compiled pipeline (a new recipe gets checked by being compiled) ----

PIPELINES = sorted(p.stem for p in compile_mod.COMPILED_DIR.glob("*.yaml"))


def _tasks(spec):
    """(task name, task, component name) for the tasks of every DAG, ParallelFor bodies included."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    for dag in dags:
        for name, task in dag["tasks"].items():
            comp = task["componentRef"]["name"]
            if "executorLabel" in spec["components"][comp]:
                yield name, task, comp


def _stage(comp):
    import re

    return re.sub(r"-\d+$", "", comp.removeprefix("comp-"))  # comp-train-2 -> train


def _env_from(cfg):
    secrets = {kv["envVar"]: (s["secretName"], s.get("optional", False))
               for s in cfg.get("secretAsEnv", []) for kv in s["keyToEnv"]}
    maps = {kv["envVar"]: m["configMapName"] for m in cfg.get("configMapAsEnv", []) for kv in m["keyToEnv"]}
    return secrets, maps



@pytest.mark.parametrize("name", PIPELINES)
def test_every_task_gets_what_its_stage_needs(name):
    spec, platform = _load(name)
    k8s = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
    s = settings.ClusterSettings()
    for task_name, task, comp in _tasks(spec):
        stage = _stage(comp)
        assert stage in settings.STAGE_NEEDS, f"{name}/{task_name}: call settings.apply() on it"
        needs = settings.STAGE_NEEDS[stage]
        executor = spec["components"][comp]["executorLabel"]
        cfg = k8s.get(executor, {})
        secrets, maps = _env_from(cfg)
        where = f"{name}/{task_name}"
        if needs.s3:
            assert {k: secrets.get(k) for k in s.secrets.s3_keys} == {k: (s.secrets.s3_secret, False)
                                                                     for k in s.secrets.s3_keys}, where
            assert all(maps.get(k) == s.secrets.endpoints_config_map for k in s.secrets.s3_endpoint_keys), where
        if needs.mlflow:
            assert maps.get("MLFLOW_TRACKING_URI") == s.secrets.endpoints_config_map, where
            assert all(secrets.get(k) == (s.secrets.mlflow_secret, True) for k in s.secrets.mlflow_keys), where
        if not (needs.s3 or needs.mlflow):
            assert not secrets and not maps, f"{where}: credentials where none are needed"
        assert ("retryPolicy" in task) == needs.retry, where
        if needs.retry:
            assert task["retryPolicy"]["maxRetryCount"] == s.retry.num_retries
        assert task.get("cachingOptions", {}).get("enableCache", False) == needs.cache, where
        if needs.workspace:
            assert cfg["pvcMount"][0]["constant"] == s.workspace.pvc, where
            assert cfg["pvcMount"][0]["mountPath"] == s.workspace.mount_path, where


@pytest.mark.parametrize("name", PIPELINES)
def test_every_gpu_task_has_accelerator_toleration_and_shm(name):
    spec, platform = _load(name)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    pools = settings.ClusterSettings().pools
    for task_name, _, comp in _tasks(spec):
        executor = spec["components"][comp]["executorLabel"]
        resources = spec["deploymentSpec"]["executors"][executor]["container"].get("resources", {})
        pool = pools.get(_stage(comp))
        assert ("accelerator" in resources) == (pool is not None), f"{name}/{task_name}"
        if pool is None:
            continue
        assert resources["accelerator"]["resourceType"] == pool.accelerator_type
        assert int(resources["accelerator"]["resourceCount"]) == pool.accelerator_limit
        cfg = k8s[executor]
        assert cfg["nodeSelector"]["labels"] == pool.node_selector
        assert {"key": pool.toleration_key, "operator": "Exists", "effect": pool.toleration_effect} in cfg["tolerations"]
        shm = [m for m in cfg["emptyDirMounts"] if m["mountPath"] == "/dev/shm"]
        assert shm and shm[0]["medium"] == "Memory" and shm[0]["sizeLimit"] == pool.shm_size


@pytest.mark.parametrize("name", PIPELINES)
def test_no_credentials_in_the_ir(name):
    """Credentials reach pods from Secrets only: no parameter, default or env value carries one."""
    text = (compile_mod.COMPILED_DIR / f"{name}.yaml").read_text()
    spec, _ = _load(name)
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    assert not [p for p in params if any(w in p.lower() for w in ("secret", "password", "token", "access_key"))]
    s = settings.Secrets()
    for ex in spec["deploymentSpec"]["executors"].values():
        for env in ex["container"].get("env", []):
            assert env["name"] not in (*s.s3_keys, *s.mlflow_keys), f"{env['name']} has a literal value"
    # the stack's defaults, the dev overlay's well-known keys, the base manifest's placeholders
    for credential in ("minio123", "REPLACE-WITH", "visalign-local-secret", "AKIA"):
        assert credential not in text
