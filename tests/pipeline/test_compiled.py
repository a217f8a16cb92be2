"""The compiled IR is up to date and carries the cluster settings."""

import yaml
from visalign_pipelines import compile as compile_mod
from visalign_pipelines import settings


def _load(name):
    docs = list(yaml.safe_load_all((compile_mod.COMPILED_DIR / f"{name}.yaml").read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def test_compiled_ir_is_up_to_date(monkeypatch):
    monkeypatch.delenv("VISALIGN_IMAGE", raising=False)
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


def test_image_setting_reaches_the_ir(monkeypatch, tmp_path):
    import importlib

    import visalign_pipelines.components as components
    import visalign_pipelines.seva as seva

    monkeypatch.setenv("VISALIGN_IMAGE", "registry.example/visalign@sha256:" + "0" * 64)
    try:
        importlib.reload(components)
        importlib.reload(seva)
        from kfp import compiler

        compiler.Compiler().compile(seva.seva, str(tmp_path / "seva.yaml"))
        spec = next(yaml.safe_load_all((tmp_path / "seva.yaml").read_text()))
        images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
        assert images == {"registry.example/visalign@sha256:" + "0" * 64}
    finally:
        monkeypatch.delenv("VISALIGN_IMAGE")
        importlib.reload(components)
        importlib.reload(seva)


def test_pipeline_parameters_have_documented_defaults():
    from visalign import recipes

    spec, _ = _load("seva")
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"seeds", "benchmarks", "base_model", "profile", "overrides", "experiment"} <= set(params)
    assert params["profile"]["defaultValue"] in recipes.PROFILES
