"""`visalign upload` and `visalign submit`: the compiled pipelines on a Kubeflow Pipelines server.

    visalign upload --host http://localhost:8080            # every recipe: a pipeline + its version
    visalign submit --host http://localhost:8080 --recipe seva \\
        --param seeds=s3://visalign/seeds/llava.json --param benchmarks=s3://visalign/benchmarks/pope.tsv \\
        --param base_model=s3://visalign/models/llava-1.5-7b --set train.num_nodes=2

Idempotent by construction: a pipeline is found by its name (visalign-<recipe>) and a version is
named after the package version and a digest of its IR, so uploading the same IR again creates
nothing while a changed IR (a new image, new cluster settings) becomes a new version. The Helm
chart's post-install/post-upgrade Job runs `visalign upload --compile`, compiling with the
cluster's settings (VISALIGN_IMAGE, VISALIGN_CLUSTER_SETTINGS) first. `submit` checks every
--param against the IR's parameter types and every --set against the recipe before it sends
anything, runs the newest version on the server (or, with --upload, this checkout's IR), gets or
creates the experiment and prints the run's URL. This module imports kfp: a client, not a stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from visalign.recipes import ConfigError

log = logging.getLogger(__name__)

PIPELINE_PREFIX = "visalign-"
HOST_ENV = "KF_PIPELINES_ENDPOINT"  # kfp.Client's own variable
TOKEN_ENV = "VISALIGN_KFP_TOKEN"  # a bearer token, e.g. `kubectl create token` for a port-forward


@dataclass(frozen=True)
class Uploaded:
    recipe: str
    pipeline: str
    pipeline_id: str
    version: str
    version_id: str
    created: bool


# ---- pure parts ----------------------------------------------------------------------------------

def compiled_pipelines(directory: str | os.PathLike | None = None) -> dict[str, Path]:
    """Recipe name -> compiled IR shipped with the package (pipelines/compiled/<recipe>.yaml)."""
    root = Path(directory) if directory else Path(str(resources.files("visalign_pipelines") / "compiled"))
    found = {p.stem: p for p in sorted(root.glob("*.yaml"))}
    if not found:
        raise ConfigError([f"{root}: no compiled pipelines; run `make compile`"])
    return found


def pipeline_name(recipe: str) -> str:
    return f"{PIPELINE_PREFIX}{recipe}"


def version_name(ir_text: str) -> str:
    """`v<package version>-<IR digest>`: equal IR, equal name (so an upload is a no-op)."""
    try:
        pkg = metadata.version("visalign")
    except metadata.PackageNotFoundError:
        pkg = "0"
    return f"v{pkg}-{hashlib.sha256(ir_text.encode()).hexdigest()[:12]}"


def ir_parameters(ir_path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The pipeline's parameters (type, default, optional) from the IR's root inputDefinitions."""
    import yaml

    spec = next(yaml.safe_load_all(Path(ir_path).read_text()))
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


def _convert(name: str, raw: str, kind: str) -> Any:
    if kind == "STRING":
        return raw
    if kind == "NUMBER_INTEGER":
        return int(raw)
    if kind == "NUMBER_DOUBLE":
        return float(raw)
    if kind == "BOOLEAN":
        if raw.lower() not in ("true", "false"):
            raise ValueError("expected true or false")
        return raw.lower() == "true"
    if kind == "LIST":
        value = json.loads(raw) if raw.lstrip().startswith("[") else [v for v in raw.split(",") if v]
        if not isinstance(value, list):
            raise ValueError("expected a JSON list or comma-separated values")
        return value
    if kind == "STRUCT":
        value = json.loads(raw)
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value
    raise ValueError(f"parameter type {kind} is not supported on the command line")


def parse_params(items: list[str], parameters: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """--param k=v strings -> typed pipeline arguments; every problem is reported at once."""
    problems, out = [], {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq:
            problems.append(f"--param {item!r}: write it as NAME=VALUE")
        elif key not in parameters:
            problems.append(f"--param {key}: unknown pipeline parameter; known: {sorted(parameters)}")
        else:
            kind = parameters[key]["parameterType"]
            try:
                out[key] = _convert(key, raw, kind)
            except ValueError as e:  # json.JSONDecodeError is a ValueError too
                problems.append(f"--param {key}={raw!r}: {kind}: {e}")
    missing = [k for k, p in parameters.items()
               if k not in out and "defaultValue" not in p and not p.get("isOptional")]
    problems += [f"--param {k}: required ({parameters[k]['parameterType']}), e.g. --param {k}=..." for k in missing]
    if problems:
        raise ConfigError(problems)
    return out


def merge_overrides(recipe: str, arguments: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Fold --set stage.field=value into the `overrides` argument and validate the whole recipe now,
    so a bad value fails here and not hours into the run."""
    from visalign import recipes

    overrides = dict(arguments.get("overrides") or {})
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError([f"--set {item!r}: write it as STAGE.FIELD=VALUE"])
        overrides[key] = value
    recipes.load(recipe, arguments.get("profile", "paper"), overrides)
    return {**arguments, "overrides": overrides} if overrides or "overrides" in arguments else arguments


# ---- calls to the server -------------------------------------------------------------------------

def client(host: str | None, token: str | None = None, in_cluster_token: bool = False, namespace: str | None = None):
    """kfp.Client for `host` (an explicit host never falls back to a kubeconfig)."""
    import kfp

    host = host or os.environ.get(HOST_ENV)
    if not host:
        raise ConfigError([f"--host: the KFP API address is required (or set {HOST_ENV}), e.g. http://localhost:8080 "
                           "after `kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80`"])
    credentials = None
    if in_cluster_token:  # multi-user KFP: the projected token of the pod's service account
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = ServiceAccountTokenVolumeCredentials()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP 2.0.0-beta.2 and later"
        kw = {"namespace": namespace} if namespace else {}
        return kfp.Client(host=host, existing_token=token or os.environ.get(TOKEN_ENV), credentials=credentials, **kw)


def _find_version(kfp_client: Any, pipeline_id: str, name: str) -> str | None:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    found = kfp_client.list_pipeline_versions(pipeline_id, page_size=10, filter=flt).pipeline_versions or []
    return found[0].pipeline_version_id if found else None


def upload(kfp_client: Any, irs: dict[str, Path], namespace: str | None = None) -> list[Uploaded]:
    """Create each missing pipeline and each missing version; existing ones are left alone."""
    import kfp_server_api
    import yaml

    done = []
    for recipe, path in sorted(irs.items()):
        text = path.read_text()
        name, version = pipeline_name(recipe), version_name(text)
        description = next(yaml.safe_load_all(text)).get("pipelineInfo", {}).get("description", "")
        pipeline_id = kfp_client.get_pipeline_id(name)
        if pipeline_id is None:
            # kfp.Client.upload_pipeline would also create a first version named like the pipeline;
            # creating the empty pipeline keeps one version per distinct IR.
            body = kfp_server_api.V2beta1Pipeline(display_name=name, description=description, namespace=namespace)
            pipeline_id = kfp_client._pipelines_api.pipeline_service_create_pipeline(pipeline=body).pipeline_id
            log.info("%s: pipeline created (%s)", name, pipeline_id)
        version_id = _find_version(kfp_client, pipeline_id, version)
        created = version_id is None
        if created:
            version_id = kfp_client.upload_pipeline_version(str(path), version, pipeline_id=pipeline_id,
                                                            description=description).pipeline_version_id
        done.append(Uploaded(recipe, name, pipeline_id, version, version_id, created))
    return done


def compile_pipelines(out_dir: str | os.PathLike) -> dict[str, Path]:
    """Compile every pipeline with this environment's image and cluster settings.

    In a child process: the pipeline modules read their settings when imported, and the pipelines
    package sits above this one (it imports the stages), so infra never imports it.
    """
    done = subprocess.run([sys.executable, "-m", "visalign_pipelines.compile", "--out-dir", str(out_dir)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compiling the pipelines failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return {p.stem: p for p in sorted(Path(out_dir).glob("*.yaml"))}


def latest_version(kfp_client: Any, recipe: str) -> Uploaded:
    """The newest version on the server (what the chart's upload Job put there last)."""
    name = pipeline_name(recipe)
    pipeline_id = kfp_client.get_pipeline_id(name)
    if pipeline_id is None:
        raise ConfigError([f"--recipe {recipe}: no pipeline {name} on the server; install the chart (its Job uploads "
                           "the pipelines), run `visalign upload`, or pass --upload"])
    found = kfp_client.list_pipeline_versions(pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions
    if not found:
        raise ConfigError([f"--recipe {recipe}: pipeline {name} has no version; run `visalign upload`"])
    return Uploaded(recipe, name, pipeline_id, found[0].display_name, found[0].pipeline_version_id, False)


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def submit(kfp_client: Any, recipe: str, ir: Path | None, arguments: dict[str, Any], *, experiment: str,
           run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = None) -> tuple[Uploaded, str]:
    """Run the server's newest version (or upload `ir` first), in the experiment (got or created)."""
    up = upload(kfp_client, {recipe: ir})[0] if ir is not None else latest_version(kfp_client, recipe)
    exp = kfp_client.create_experiment(experiment, namespace=namespace)  # returns the existing one by name
    name = run_name or f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = kfp_client.run_pipeline(exp.experiment_id, name, params=arguments, pipeline_id=up.pipeline_id,
                                  version_id=up.version_id, service_account=service_account)
    return up, run.run_id


# ---- the two subcommands -------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Both subcommands live here; the parser's prog ('visalign upload' / 'visalign submit') says which."""
    parser.add_argument("--host", default=os.environ.get(HOST_ENV), help=f"KFP API address (default ${HOST_ENV}).")
    parser.add_argument("--token", default=None, help=f"Bearer token for the KFP API (default ${TOKEN_ENV}).")
    parser.add_argument("--in-cluster-token", action="store_true",
                        help="Authenticate with the pod's projected KFP service-account token (multi-user KFP).")
    parser.add_argument("--namespace", default=None, help="Profile namespace (multi-user KFP); omit for standalone.")
    parser.add_argument("--compiled-dir", default=None, help="Directory of compiled IR (default: the package's).")
    parser.add_argument("--compile", action="store_true",
                        help="Compile the pipelines first with this environment's VISALIGN_IMAGE and "
                             "VISALIGN_CLUSTER_SETTINGS (what the Helm chart's upload Job does).")
    if parser.prog.endswith("upload"):
        parser.add_argument("--recipe", action="append", default=[], help="Upload only this recipe (repeatable).")
        return
    parser.add_argument("--upload", action="store_true",
                        help="Upload this checkout's IR (idempotent) and run it, instead of the server's newest version.")
    parser.add_argument("--recipe", required=True, help="Recipe (pipeline) to run, e.g. seva.")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="Pipeline argument; lists as a,b or JSON, dicts as JSON (repeatable).")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.FIELD=VALUE",
                        help="Recipe override, folded into the overrides argument and validated first (repeatable).")
    parser.add_argument("--experiment", default=None, help="KFP experiment (default: visalign-<recipe>).")
    parser.add_argument("--run-name", default=None, help="Run name (default: <recipe>-<timestamp>).")
    parser.add_argument("--service-account", default=None,
                        help="Service account of the run's pods (default: KFP's; it needs the TrainJob role).")


def cli(args: argparse.Namespace) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="visalign-ir-") as tmp:
        irs = compile_pipelines(tmp) if args.compile else compiled_pipelines(args.compiled_dir)
        return _upload(args, irs) if args.command == "upload" else _submit(args, irs)


def _upload(args: argparse.Namespace, irs: dict[str, Path]) -> int:
    unknown = sorted(set(args.recipe) - set(irs))
    if unknown:
        raise ConfigError([f"--recipe {r}: no compiled pipeline; available: {sorted(irs)}" for r in unknown])
    kfp_client = client(args.host, args.token, args.in_cluster_token, args.namespace)
    for up in upload(kfp_client, {r: p for r, p in irs.items() if not args.recipe or r in args.recipe}):
        print(f"{up.pipeline}: version {up.version} {'created' if up.created else 'exists'} "
              f"(pipeline {up.pipeline_id}, version {up.version_id})")
    return 0


def _submit(args: argparse.Namespace, irs: dict[str, Path]) -> int:
    if args.recipe not in irs:
        raise ConfigError([f"--recipe {args.recipe}: no compiled pipeline; available: {sorted(irs)}"])
    arguments = merge_overrides(args.recipe, parse_params(args.param, ir_parameters(irs[args.recipe])), args.set)
    kfp_client = client(args.host, args.token, args.in_cluster_token, args.namespace)
    up, run_id = submit(kfp_client, args.recipe, irs[args.recipe] if args.upload else None, arguments,
                        experiment=args.experiment or pipeline_name(args.recipe), run_name=args.run_name,
                        namespace=args.namespace, service_account=args.service_account)
    print(f"{up.pipeline} {up.version}: run {run_id}")
    print(run_url(args.host or os.environ.get(HOST_ENV, ""), run_id))
    return 0
