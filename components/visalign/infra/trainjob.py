"""Multi-node training as a Kubeflow Trainer TrainJob (trainer.kubeflow.org/v1alpha1).

With train.num_nodes > 1 (or `train_launcher: trainjob` in the cluster settings) the pipeline's
train step does not train in its own pod. It creates a TrainJob on the torch-distributed runtime
with our CUDA image; the runtime starts one pod per node and torchrun (which reads the PET_*
variables the runtime sets) runs `python -m visalign.stages.train_node` on every GPU: the same
`train.run` as in one pod, DeepSpeed through TRL. The step waits with a deadline, logs a progress
line whenever the job's state changes, fails with the job's reason, and deletes the job however
the step ends (complete, failed, timed out, cancelled).

    step pod: pairs (s3://) -> TrainJob (N nodes x G GPUs) -> rank 0 uploads the adapter to a
    staging prefix -> the step downloads it into its Output[Model] -> KFP stores it as usual

The step's compile-time cluster settings (image, GPU pool, Secrets, workspace PVC) reach it as
one env var, VISALIGN_TRAINJOB (pipelines/settings.py writes it), so the TrainJob's pods get the
same node selector, tolerations, /dev/shm and credentials (secretKeyRef: names, never values).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
ENV = "VISALIGN_TRAINJOB"
MANAGER = "visalign.dev/train-step"  # our entry in spec.runtimePatches (keyed by manager)
TRAINER_CONTAINER = "node"  # the torch-distributed runtime's trainer job and container name
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MAX_API_FAILURES = 5  # consecutive failed GETs (API server restarts, 5xx) before giving up


class TrainJobError(RuntimeError):
    """The TrainJob could not be created, failed, or missed its deadline; the message says why."""


@dataclass(frozen=True)
class JobConfig:
    """Everything a TrainJob needs from the cluster settings (no credentials: only Secret names)."""

    image: str
    runtime: str = "torch-distributed"
    deadline_seconds: int = 3 * 24 * 3600
    always: bool = False  # every training is a TrainJob (the step is a CPU launcher)
    gpus_per_node: int = 1
    accelerator_type: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, str]] = field(default_factory=list)
    shm_size: str = "16Gi"
    env_secrets: dict[str, tuple[str, str, bool]] = field(default_factory=dict)  # env -> (secret, key, optional)
    env_config_maps: dict[str, tuple[str, str]] = field(default_factory=dict)  # env -> (config map, key)
    workspace_pvc: str | None = None
    workspace_mount: str = "/workspace"
    poll_seconds: float = 15.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> JobConfig | None:
        raw = (os.environ if environ is None else environ).get(ENV)
        if not raw:
            return None
        data = json.loads(raw)
        data["env_secrets"] = {k: tuple(v) for k, v in data.get("env_secrets", {}).items()}
        data["env_config_maps"] = {k: tuple(v) for k, v in data.get("env_config_maps", {}).items()}
        return cls(**data)


def wanted(num_nodes: int, config: JobConfig | None) -> bool:
    """Train through a TrainJob? Yes for several nodes, or when the settings make the step a launcher."""
    return num_nodes > 1 or bool(config and config.always)


# ---- the manifest -----------------------------------------------------------------------------

def _env(config: JobConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    for name, (cm, key) in sorted(config.env_config_maps.items()):
        env.append({"name": name, "valueFrom": {"configMapKeyRef": {"name": cm, "key": key}}})
    for name, (secret, key, optional) in sorted(config.env_secrets.items()):
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}})
    if config.workspace_pvc:
        env.append({"name": "VISALIGN_WORKSPACE", "value": config.workspace_mount})
    return env


def _pod_patch(config: JobConfig) -> dict[str, Any]:
    """Node pool, /dev/shm and workspace for every node pod, through spec.runtimePatches."""
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.shm_size}}]
    mounts: list[dict[str, Any]] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if config.workspace_pvc:  # multi-node checkpoints need a ReadWriteMany claim (README)
        volumes.append({"name": "workspace", "persistentVolumeClaim": {"claimName": config.workspace_pvc}})
        mounts.append({"name": "workspace", "mountPath": config.workspace_mount})
    spec: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True},
        "volumes": volumes,
        "containers": [{"name": TRAINER_CONTAINER, "volumeMounts": mounts,
                        "securityContext": {"allowPrivilegeEscalation": False}}],
    }
    if config.node_selector:
        spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        spec["tolerations"] = [dict(t) for t in config.tolerations]
    return spec


def manifest(*, name: str, namespace: str, config: JobConfig, num_nodes: int, args: list[str],
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob: `num_nodes` pods of `gpus_per_node` processes each running the worker below."""
    job_patch = {"spec": {"template": {"spec": _pod_patch(config)}}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {
            "app.kubernetes.io/name": "visalign", "app.kubernetes.io/component": "train", **(labels or {})}},
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": config.runtime},
            "activeDeadlineSeconds": int(config.deadline_seconds),
            "trainer": {
                "image": config.image,
                # torchrun takes nnodes, node rank and master address from the runtime's PET_* env
                "command": ["torchrun", "-m", "visalign.stages.train_node"],
                "args": list(args),
                "env": _env(config),
                "numNodes": int(num_nodes),
                "numProcPerNode": int(config.gpus_per_node),
                "resourcesPerNode": {"limits": {config.accelerator_type: int(config.gpus_per_node)}},
            },
            "runtimePatches": [{"manager": MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": TRAINER_CONTAINER, "template": job_patch}]}}}}],
        },
    }


# ---- watching a job -----------------------------------------------------------------------------

def job_state(job: dict[str, Any]) -> tuple[str, str, str]:
    """(state, reason, message): Complete, Failed, Suspended, Running or Pending."""
    status = job.get("status") or {}
    true = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    for state in ("Failed", "Complete", "Suspended"):
        if state in true:
            return state, true[state].get("reason", ""), true[state].get("message", "")
    running = any((j.get("active") or 0) + (j.get("ready") or 0) > 0 for j in status.get("jobsStatus") or [])
    return ("Running" if running else "Pending"), "", ""


def progress_line(job: dict[str, Any]) -> str:
    state, reason, _ = job_state(job)
    status = job.get("status") or {}
    parts = [f"{state}{' (' + reason + ')' if reason else ''}"]
    for j in status.get("jobsStatus") or []:
        parts.append(f"{j.get('name')}: {j.get('ready', 0)} ready, {j.get('active', 0)} active, "
                     f"{j.get('succeeded', 0)} succeeded, {j.get('failed', 0)} failed")
    trainer = status.get("trainerStatus") or {}
    if trainer.get("progressPercentage") is not None:
        parts.append(f"{trainer['progressPercentage']}%")
    if trainer.get("estimatedRemainingSeconds") is not None:
        parts.append(f"~{trainer['estimatedRemainingSeconds']} s left")
    parts += [f"{m['name']}={m['value']}" for m in trainer.get("metrics") or []]
    return "; ".join(parts)


def _api_error(e: Exception) -> int | None:
    """HTTP status of a kubernetes client error; None for connection-level failures."""
    return getattr(e, "status", None)


def wait(api: Any, name: str, namespace: str, *, deadline_seconds: float, poll_seconds: float,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll the job until Complete (returned) or Failed / past the deadline (TrainJobError)."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    start, last, failures = clock(), None, 0
    while True:
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            failures = 0
        except (ApiException, HTTPError) as e:
            status = _api_error(e)
            if status == 404:
                raise TrainJobError(f"TrainJob {namespace}/{name} disappeared while the step waited for it "
                                    "(deleted by someone else?); re-run the step") from None
            failures += 1
            if failures >= MAX_API_FAILURES or (status is not None and status < 500):
                raise TrainJobError(f"TrainJob {namespace}/{name}: the API server failed {failures} time(s): {e}") from e
            log.warning("TrainJob %s: API error %s (%d/%d), retrying", name, status, failures, MAX_API_FAILURES)
            job = None
        if job is not None:
            line = progress_line(job)
            if line != last:
                log.info("TrainJob %s/%s: %s", namespace, name, line)
                last = line
            state, reason, message = job_state(job)
            if state == "Complete":
                return job
            if state == "Failed":
                raise TrainJobError(f"TrainJob {namespace}/{name} failed: {reason or 'unknown reason'}: "
                                    f"{message or '(no message)'}; see `kubectl -n {namespace} logs -l "
                                    f"jobset.sigs.k8s.io/jobset-name={name}`")
        elapsed = clock() - start
        if elapsed >= deadline_seconds:
            raise TrainJobError(f"TrainJob {namespace}/{name} did not finish within {deadline_seconds:.0f} s "
                                f"(last: {last}); raise trainjob_deadline_seconds in the cluster settings or "
                                "check the GPU pool has free nodes")
        sleep(min(poll_seconds, max(deadline_seconds - elapsed, 0.01)))


def delete(api: Any, name: str, namespace: str) -> None:
    """Delete the job and, in the foreground, its pods; a job already gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                            propagation_policy="Foreground")
        log.info("TrainJob %s/%s: deleted", namespace, name)
    except ApiException as e:
        if e.status != 404:
            log.error("TrainJob %s/%s: could not delete it (%s); delete it by hand", namespace, name, e.status)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """A cancelled KFP run sends SIGTERM: turn it into an exception so the job is deleted."""
    def handler(signum, frame):
        raise TrainJobError("the step was terminated (run cancelled or pod evicted)")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def submit_and_wait(api: Any, body: dict[str, Any], *, deadline_seconds: float, poll_seconds: float,
                    **wait_kw: Any) -> dict[str, Any]:
    """Create the job (or adopt it after a retry of this step), wait for it, delete it at the end."""
    from kubernetes.client.exceptions import ApiException

    name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        log.info("TrainJob %s/%s: created (%d nodes, runtime %s)", namespace, name,
                 body["spec"]["trainer"]["numNodes"], body["spec"]["runtimeRef"]["name"])
    except ApiException as e:
        if e.status == 409:
            log.info("TrainJob %s/%s: exists already (a retry of this step); waiting for it", namespace, name)
        elif e.status == 404:
            raise TrainJobError(f"{GROUP}/{VERSION} {PLURAL} is not served by this cluster: install Kubeflow Trainer "
                                "(README, 'Install on a cluster') or set train.num_nodes=1") from None
        elif e.status == 403:
            raise TrainJobError(f"forbidden to create {PLURAL} in {namespace}: bind the run's service account to the "
                                "visalign TrainJob role (charts/visalign rbac, or manifests/base)") from None
        else:
            raise TrainJobError(f"TrainJob {namespace}/{name}: create failed ({e.status}): {e.body}") from None
    try:
        with _sigterm_raises():
            return wait(api, name, namespace, deadline_seconds=deadline_seconds, poll_seconds=poll_seconds, **wait_kw)
    finally:
        delete(api, name, namespace)


def custom_objects_api() -> Any:
    """CustomObjectsApi for this pod's service account (or the local kubeconfig)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace() -> str:
    if Path(NAMESPACE_FILE).exists():
        return Path(NAMESPACE_FILE).read_text().strip()
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    raise TrainJobError("no namespace: not in a pod and POD_NAMESPACE is not set")


# ---- the train step's side and the worker's side -------------------------------------------------

def s3_uri(uri: str) -> str:
    """KFP's default MinIO pipeline root writes minio://BUCKET/KEY: the same object as s3://BUCKET/KEY."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def job_name(output_uri: str) -> str:
    """A DNS-1035 name, stable for one step's output (so a retried step adopts its job)."""
    from visalign.schema import stable_id

    return f"visalign-train-{stable_id(output_uri)[:12]}".lower()


def checkpoint_params(params: Any, key: str) -> Any:
    """Checkpoints on the workspace volume (VISALIGN_WORKSPACE), one folder per step output, so a
    retried step resumes where it stopped; unchanged when checkpoint_dir is set or no volume is
    mounted (kfp.local passes the env var on but mounts nothing)."""
    workspace = os.environ.get("VISALIGN_WORKSPACE")
    if params.checkpoint_dir or not workspace or not Path(workspace).is_dir():
        return params
    from visalign.schema import stable_id

    return replace(params, checkpoint_dir=str(Path(workspace) / "checkpoints" / stable_id(key)[:16]))


def run(*, pairs_uri: str, model: str, output_dir: str, output_uri: str, recipe: Any, profile: str,
        overrides: dict[str, Any], experiment: str, config: JobConfig | None = None, api: Any = None,
        namespace: str | None = None) -> dict[str, Any]:
    """Train `recipe` on the pairs as a TrainJob; the adapter lands in `output_dir` like a local run."""
    from visalign.infra import store

    config = config or JobConfig.from_env()
    if config is None:
        raise TrainJobError(f"train.num_nodes={recipe.train.num_nodes}: multi-node training runs as a Kubeflow "
                            f"TrainJob from the compiled pipeline on a cluster ({ENV} is not set here); "
                            "set train.num_nodes=1 to train in this process")
    pairs_uri, staging = s3_uri(pairs_uri), s3_uri(output_uri).rstrip("/") + ".trainjob"
    if not store.is_s3(pairs_uri) or not store.is_s3(staging):
        raise TrainJobError(f"pairs {pairs_uri}: the TrainJob's nodes cannot read a pod-local path; set the "
                            "pipeline root to the object store (kfp-launcher ConfigMap, charts/visalign)")
    name, namespace = job_name(output_uri), namespace or current_namespace()
    args = ["--pairs", pairs_uri, "--model", model, "--output-uri", staging, "--recipe", recipe.name,
            "--profile", profile, "--overrides", json.dumps(overrides, sort_keys=True), "--experiment", experiment]
    body = manifest(name=name, namespace=namespace, config=config, num_nodes=recipe.train.num_nodes, args=args,
                    labels={"visalign.dev/recipe": recipe.name})
    start = time.monotonic()
    job = submit_and_wait(api or custom_objects_api(), body, deadline_seconds=config.deadline_seconds,
                          poll_seconds=config.poll_seconds)
    store.download_dir(staging, output_dir)
    report_path = Path(output_dir) / "report.json"
    if not report_path.exists():
        raise TrainJobError(f"TrainJob {name} completed but {staging} holds no report.json: rank 0 did not upload")
    report = json.loads(report_path.read_text())
    report.setdefault("extra", {})["trainjob"] = {
        "name": name, "namespace": namespace, "nodes": recipe.train.num_nodes, "gpus_per_node": config.gpus_per_node,
        "seconds": round(time.monotonic() - start, 1), "staging": staging, "final": progress_line(job)}
    report_path.write_text(json.dumps(report, indent=2))
    return report
