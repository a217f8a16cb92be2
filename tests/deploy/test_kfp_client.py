"""`visalign upload` / `visalign submit`: the pure parts (typed parameters, version names, recipe
checks) and the calls, against KfpApiStandIn, a local HTTP stand-in of the KFP v2beta1 API on
127.0.0.1 (deploy_support.py) driven by the real kfp.Client."""

from __future__ import annotations

import pytest

from fresh_process import run_fresh
from visalign import cli
from visalign.infra import kfp_client
from visalign.recipes import ConfigError

IRS = kfp_client.compiled_pipelines()
SEVA_PARAMS = kfp_client.ir_parameters(IRS["seva"])
REQUIRED = ["--param", "seeds=s3://v/seeds/a.json,s3://v/seeds/b.tsv", "--param", "benchmarks=[\"s3://v/b/pope.tsv\"]",
            "--param", "base_model=s3://v/models/base"]


@pytest.fixture(autouse=True)
def _no_user_kfp_context(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT", raising=False)


def test_params_are_typed_by_the_ir():
    args = kfp_client.parse_params(
        ["seeds=s3://a.json,s3://b.json", "benchmarks=[\"s3://p.tsv\"]", "base_model=s3://m",
         "overrides={\"train.beta\": 0.2}", "profile=toy"], SEVA_PARAMS)
    assert args == {"seeds": ["s3://a.json", "s3://b.json"], "benchmarks": ["s3://p.tsv"], "base_model": "s3://m",
                    "overrides": {"train.beta": 0.2}, "profile": "toy"}


def test_every_param_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        kfp_client.parse_params(["seed=s3://a", "overrides=[1]", "nonsense"], SEVA_PARAMS)
    text = str(e.value)
    for expected in ("--param seed: unknown", "--param overrides='[1]': STRUCT", "'nonsense': write it as",
                     "--param seeds: required", "--param base_model: required"):
        assert expected in text


def test_scalar_types():
    params = {"n": {"parameterType": "NUMBER_INTEGER"}, "x": {"parameterType": "NUMBER_DOUBLE"},
              "b": {"parameterType": "BOOLEAN"}}
    assert kfp_client.parse_params(["n=3", "x=0.5", "b=true"], params) == {"n": 3, "x": 0.5, "b": True}
    with pytest.raises(ConfigError, match="b='yes'"):
        kfp_client.parse_params(["b=yes"], params)


def test_sets_are_validated_against_the_recipe_before_anything_is_sent():
    args = kfp_client.merge_overrides("seva", {"profile": "toy"}, ["train.num_nodes=2", "train.beta=0.2"])
    assert args["overrides"] == {"train.num_nodes": "2", "train.beta": "0.2"}
    with pytest.raises(ConfigError, match="train.beta=-1"):
        kfp_client.merge_overrides("seva", {}, ["train.beta=-1"])


def test_version_names_follow_the_ir():
    a = kfp_client.version_name("ir-1")
    assert a == kfp_client.version_name("ir-1") != kfp_client.version_name("ir-2")
    assert a.startswith("v") and len(a.rsplit("-", 1)[1]) == 12


def test_upload_is_idempotent_and_a_changed_ir_is_a_new_version(kfp_api, tmp_path, capsys):
    assert cli.main(["upload", "--host", kfp_api.url]) == 0
    assert cli.main(["upload", "--host", kfp_api.url]) == 0
    out = capsys.readouterr().out
    assert "visalign-seva: version" in out and "created" in out and "exists" in out
    assert [p["display_name"] for p in kfp_api.pipelines.values()] == [f"visalign-{r}" for r in sorted(IRS)]
    assert all(len(v) == 1 for v in kfp_api.versions.values())
    changed = tmp_path / "compiled"
    changed.mkdir()
    (changed / "seva.yaml").write_text(IRS["seva"].read_text().replace("visalign-cuda", "visalign-cuda-next"))
    assert cli.main(["upload", "--host", kfp_api.url, "--compiled-dir", str(changed)]) == 0
    (pid,) = [p for p, v in kfp_api.pipelines.items() if v["display_name"] == "visalign-seva"]
    assert len(kfp_api.versions[pid]) == 2 and len(kfp_api.pipelines) == len(IRS)


def test_submit_runs_the_newest_version_gets_or_creates_the_experiment_and_prints_the_url(kfp_api, tmp_path, capsys):
    assert cli.main(["upload", "--host", kfp_api.url]) == 0
    newer = tmp_path / "compiled"
    newer.mkdir()
    (newer / "seva.yaml").write_text(IRS["seva"].read_text().replace("visalign-cuda", "visalign-cuda-next"))
    assert cli.main(["upload", "--host", kfp_api.url, "--compiled-dir", str(newer)]) == 0  # e.g. a helm upgrade
    argv = ["submit", "--host", kfp_api.url, "--recipe", "seva", *REQUIRED, "--param", "profile=toy",
            "--set", "train.num_nodes=2", "--service-account", "visalign-runner"]
    assert cli.main(argv) == 0
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"{kfp_api.url}/#/runs/details/r-2"
    assert len(kfp_api.experiments) == 1 and len(kfp_api.runs) == 2
    run = kfp_api.runs[0]
    assert run["service_account"] == "visalign-runner"
    (seva_id,) = [p for p, v in kfp_api.pipelines.items() if v["display_name"] == "visalign-seva"]
    assert run["pipeline_version_reference"]["pipeline_version_id"] == f"{seva_id}-v2"  # the newest, not this checkout's
    params = run["runtime_config"]["parameters"]
    assert params["seeds"] == ["s3://v/seeds/a.json", "s3://v/seeds/b.tsv"]
    assert params["overrides"] == {"train.num_nodes": "2"} and params["profile"] == "toy"


def test_submit_with_upload_runs_this_checkouts_ir(kfp_api, capsys):
    assert cli.main(["submit", "--host", kfp_api.url, "--recipe", "seva", "--upload", *REQUIRED]) == 0
    assert cli.main(["submit", "--host", kfp_api.url, "--recipe", "seva", "--upload", *REQUIRED]) == 0
    assert sum(len(v) for v in kfp_api.versions.values()) == 1  # uploaded once, then reused
    assert {r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp_api.runs} == {"p-1-v1"}


def test_submit_without_an_uploaded_pipeline_says_what_to_do(kfp_api, capsys):
    assert cli.main(["submit", "--host", kfp_api.url, "--recipe", "seva", *REQUIRED]) == 2
    assert "install the chart" in capsys.readouterr().err and not kfp_api.runs


def test_upload_compile_uses_the_environments_image_and_cluster_settings(kfp_api, tmp_path):
    settings_file = tmp_path / "cluster.yaml"
    settings_file.write_text("pools:\n  train:\n    accelerator_limit: 8\n    node_selector: {pool: h100}\n")
    digest = "registry.example/visalign-cuda@sha256:" + "2" * 64
    # its own process, as the chart's upload Job: the pipelines read image and settings at import
    run_fresh(["visalign.cli", "upload", "--host", kfp_api.url, "--compile"],
              {"VISALIGN_IMAGE": digest, "VISALIGN_CLUSTER_SETTINGS": str(settings_file), "HOME": str(tmp_path)})
    assert len(kfp_api.uploads) == len(IRS)
    for body in kfp_api.uploads:
        assert digest.encode() in body and b"pool: h100" in body


def test_submit_refuses_bad_input_without_calling_the_server(kfp_api, capsys):
    code = cli.main(["submit", "--host", kfp_api.url, "--recipe", "seva", *REQUIRED, "--set", "train.num_nodes=0"])
    assert code == 2 and "train.num_nodes=0" in capsys.readouterr().err
    assert cli.main(["submit", "--host", kfp_api.url, "--recipe", "nope"]) == 2
    assert not kfp_api.runs and not kfp_api.pipelines


def test_a_missing_host_says_how_to_get_one(capsys):
    assert cli.main(["upload"]) == 2
    assert "port-forward" in capsys.readouterr().err
