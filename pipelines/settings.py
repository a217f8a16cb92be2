"""Where every cluster-facing setting of the pipelines lives: image, GPU pools, secrets, volumes.

The image reference is one setting (VISALIGN_IMAGE at compile time: a tag or a digest) written
into every component of the compiled IR. Everything else is a compile-time ClusterSettings,
from its defaults or from the YAML file named by VISALIGN_CLUSTER_SETTINGS (same field names,
unknown keys refused). One helper, `apply(task)`, gives each stage what STAGE_NEEDS says it
needs: a GPU pool (accelerator, node selector, toleration, /dev/shm), S3 and MLflow settings as
env from a ConfigMap and Secrets (never pipeline parameters, never values in the IR), the
workspace PVC, retries for the I/O-bound stages and no caching where a re-run must redo the work.
kfp.local ignores all of it; the compiled IR carries it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# The CUDA image (images/Dockerfile.cuda): every component runs in it, CPU steps included, so that
# one reference (tag or digest) pins the whole pipeline; the CPU image serves the Helm chart's jobs.
DEFAULT_IMAGE = "ghcr.io/visalign/visalign-cuda:0.1.0"
SETTINGS_ENV = "VISALIGN_CLUSTER_SETTINGS"  # path of a YAML file of ClusterSettings fields


def image() -> str:
    """The image every component runs in; set VISALIGN_IMAGE (tag or @sha256 digest) to change it."""
    return os.environ.get("VISALIGN_IMAGE", DEFAULT_IMAGE)


@dataclass(frozen=True)
class GpuPool:
    """The GPU node pool of a cluster; the defaults match NVIDIA's GPU operator labels and taints."""

    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    toleration_key: str = "nvidia.com/gpu"
    toleration_effect: str = "NoSchedule"
    shm_size: str = "16Gi"  # /dev/shm for dataloader workers and NCCL; the container default is 64 MiB


@dataclass(frozen=True)
class Secrets:
    """Where a pod finds its endpoints (a ConfigMap) and credentials (Secrets), by env var name.

    The chart (charts/visalign) and the kustomize base (manifests/) create these objects in the
    namespace the runs execute in; only their names are compiled into the IR.
    """

    endpoints_config_map: str = "visalign-endpoints"
    s3_endpoint_keys: tuple[str, ...] = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    mlflow_endpoint_keys: tuple[str, ...] = ("MLFLOW_TRACKING_URI",)
    s3_secret: str = "visalign-s3"
    s3_keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    # MLflow auth is optional (a server without --app-name basic-auth needs none): optional=True.
    mlflow_secret: str = "visalign-mlflow"
    mlflow_keys: tuple[str, ...] = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    # IPA's endpoint verifier (verify.backend=endpoint): URL, model and key of an OpenAI-compatible
    # chat endpoint. Optional: the default local verifier needs none.
    verifier_secret: str = "visalign-verifier"
    verifier_keys: tuple[str, ...] = ("VISALIGN_VERIFIER_URL", "VISALIGN_VERIFIER_MODEL", "VISALIGN_VERIFIER_API_KEY")
    # evaluate's judge (evaluate.judge=endpoint: MM-Vet, LLaVA-Bench, LLM answer extraction). Optional.
    judge_secret: str = "visalign-judge"
    judge_keys: tuple[str, ...] = ("VISALIGN_JUDGE_URL", "VISALIGN_JUDGE_MODEL", "VISALIGN_JUDGE_API_KEY")


@dataclass(frozen=True)
class Workspace:
    """A PVC for large checkpoints; train's checkpoint_dir points under mount_path/checkpoints."""

    pvc: str = "visalign-workspace"
    mount_path: str = "/workspace"


@dataclass(frozen=True)
class Retry:
    """Retries of the I/O-bound stages (object store and MLflow hiccups, node drains)."""

    num_retries: int = 3
    backoff_duration: str = "30s"
    backoff_factor: float = 2.0
    backoff_max_duration: str = "10m"


@dataclass(frozen=True)
class ClusterSettings:
    """Compile-time settings of the cluster the IR is for; VISALIGN_CLUSTER_SETTINGS overrides them."""

    # Stage (component) name -> its GPU pool; a stage not listed runs on the default (CPU) nodes.
    pools: dict[str, GpuPool] = field(default_factory=lambda: {"rollout": GpuPool(), "train": GpuPool(),
                                                               "ipa-collect": GpuPool(), "ipa-pairs": GpuPool(),
                                                               "mia-rollout": GpuPool(), "mpo-rollout": GpuPool(),
                                                               "mpo-pairs": GpuPool()})
    secrets: Secrets = field(default_factory=Secrets)
    workspace: Workspace | None = field(default_factory=Workspace)
    retry: Retry = field(default_factory=Retry)
    # pod: train in the step's own pod (num_nodes > 1 still goes through a TrainJob);
    # trainjob: the step is a CPU launcher and every training runs as a Kubeflow Trainer TrainJob.
    train_launcher: str = "pod"
    trainjob_runtime: str = "torch-distributed"
    trainjob_deadline_seconds: int = 3 * 24 * 3600


@dataclass(frozen=True)
class Needs:
    s3: bool = False
    mlflow: bool = False
    workspace: bool = False
    retry: bool = False
    cache: bool = True
    trainjob: bool = False
    verifier: bool = False  # the optional verifier Secret as env (IPA's endpoint verifier)
    judge: bool = False  # the optional judge Secret as env (evaluate's judge)


# What each stage's pod needs; every pipeline calls apply(task) on every task, so a new recipe
# gets the same cluster wiring by construction. Keys are component names (the function names).
STAGE_NEEDS: dict[str, Needs] = {
    "sample": Needs(s3=True, retry=True),
    "augment": Needs(),
    "rollout": Needs(s3=True),
    "filter-pairs": Needs(),
    # a re-run must train again, not replay an old adapter from the cache
    "train": Needs(s3=True, mlflow=True, workspace=True, cache=False, trainjob=True),
    # a judge that gives no answer fails the step (no outage is cached); its answers so far stay in judge_cache
    "evaluate": Needs(s3=True, mlflow=True, retry=True, judge=True),
    "register": Needs(s3=True, mlflow=True, retry=True, cache=False),
    # ---- mia-dpo ----
    "compose": Needs(),
    "mia-rollout": Needs(s3=True),  # loads the policy from S3
    "select-pairs": Needs(mlflow=True, retry=True),  # logs the ratio histogram to MLflow
    # ---- ipa ----
    "ipa-collect": Needs(s3=True),  # loads the round's policy (an adapter's base from S3)
    # the local verifier loads a model; the endpoint one needs the Secret. Not cached: with the
    # endpoint the verdicts depend on more than the inputs, and a re-run must not replay an outage.
    "ipa-pairs": Needs(s3=True, verifier=True, cache=False),
    # ---- mpo ----
    "mpo-rollout": Needs(s3=True),  # loads the policy from S3
    "mpo-pairs": Needs(s3=True),  # DropoutNTP loads the policy from S3
}


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a YAML mapping; unknown keys are refused (a typo must not pass silently)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    nested = {"secrets": Secrets, "workspace": Workspace, "retry": Retry}
    kw = {}
    for key, value in data.items():
        if cls is ClusterSettings and key == "pools":
            value = {stage: _build(GpuPool, pool, f"{where}.pools.{stage}") for stage, pool in (value or {}).items()}
        elif cls is ClusterSettings and key in nested and value is not None:
            value = _build(nested[key], value, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kw[key] = value
    return cls(**kw)


def cluster_settings(path: str | os.PathLike | None = None) -> ClusterSettings:
    """The defaults, or the YAML file at `path` (default: $VISALIGN_CLUSTER_SETTINGS), validated."""
    import yaml

    path = path or os.environ.get(SETTINGS_ENV)
    if not path:
        return ClusterSettings()
    s = _build(ClusterSettings, yaml.safe_load(Path(path).read_text()) or {}, str(path))
    problems = [f"pools.{k}: unknown stage; stages: {sorted(STAGE_NEEDS)}" for k in s.pools if k not in STAGE_NEEDS]
    if s.train_launcher not in ("pod", "trainjob"):
        problems.append(f"train_launcher={s.train_launcher!r}: choose pod or trainjob")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems))
    return s


def use_gpu(task, pool: GpuPool = GpuPool()):
    """Put `task` on the GPU pool: accelerator type and limit, node selector, toleration, /dev/shm."""
    from kfp import kubernetes

    task.set_accelerator_type(pool.accelerator_type).set_accelerator_limit(pool.accelerator_limit)
    for key, value in pool.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    kubernetes.add_toleration(task, key=pool.toleration_key, operator="Exists", effect=pool.toleration_effect)
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                               size_limit=pool.shm_size)
    return task


def use_services(task, secrets: Secrets = Secrets(), s3: bool = True, mlflow: bool = True):
    """Endpoints as env from the ConfigMap, credentials from Secrets (the local stack's env names).

    MLflow basic-auth is optional (a server without auth needs none), so its Secret may be absent.
    """
    from kfp import kubernetes

    keys = (secrets.s3_endpoint_keys if s3 else ()) + (secrets.mlflow_endpoint_keys if mlflow else ())
    kubernetes.use_config_map_as_env(task, secrets.endpoints_config_map, {k: k for k in keys})
    if s3:
        kubernetes.use_secret_as_env(task, secrets.s3_secret, {k: k for k in secrets.s3_keys})
    if mlflow:
        kubernetes.use_secret_as_env(task, secrets.mlflow_secret, {k: k for k in secrets.mlflow_keys},
                                     optional=True)
    return task


def trainjob_config(settings: ClusterSettings) -> Any:
    """What the train step needs to launch a TrainJob, from the same settings as its own pod."""
    from visalign.infra.trainjob import JobConfig

    s = settings.secrets
    env_secrets = {k: (s.s3_secret, k, False) for k in s.s3_keys}
    env_secrets.update({k: (s.mlflow_secret, k, True) for k in s.mlflow_keys})
    keys = (*s.s3_endpoint_keys, *s.mlflow_endpoint_keys)
    pool = settings.pools.get("train", GpuPool())
    return JobConfig(
        image=image(), runtime=settings.trainjob_runtime, deadline_seconds=settings.trainjob_deadline_seconds,
        always=settings.train_launcher == "trainjob", gpus_per_node=pool.accelerator_limit,
        accelerator_type=pool.accelerator_type, node_selector=dict(pool.node_selector),
        tolerations=[{"key": pool.toleration_key, "operator": "Exists", "effect": pool.toleration_effect}],
        shm_size=pool.shm_size, env_secrets=env_secrets,
        env_config_maps={k: (s.endpoints_config_map, k) for k in keys},
        workspace_pvc=settings.workspace.pvc if settings.workspace else None,
        workspace_mount=settings.workspace.mount_path if settings.workspace else "/workspace",
    )


def apply(task, settings: ClusterSettings | None = None):
    """Give `task` what its stage needs on a cluster (STAGE_NEEDS); call it on every task."""
    from kfp import kubernetes

    name = task.component_spec.name
    if name not in STAGE_NEEDS:
        raise ValueError(f"apply: no STAGE_NEEDS entry for component {name!r}; add one in pipelines/settings.py")
    needs, s = STAGE_NEEDS[name], settings or cluster_settings()
    if needs.s3 or needs.mlflow:
        use_services(task, s.secrets, s3=needs.s3, mlflow=needs.mlflow)
    launcher_only = name == "train" and s.train_launcher == "trainjob"
    if name in s.pools and not launcher_only:
        use_gpu(task, s.pools[name])
    if needs.workspace and s.workspace:
        kubernetes.mount_pvc(task, pvc_name=s.workspace.pvc, mount_path=s.workspace.mount_path)
        task.set_env_variable("VISALIGN_WORKSPACE", s.workspace.mount_path)
    if needs.trainjob:
        task.set_env_variable("VISALIGN_TRAINJOB", trainjob_config(s).to_json())
    if needs.verifier:
        kubernetes.use_secret_as_env(task, s.secrets.verifier_secret, {k: k for k in s.secrets.verifier_keys},
                                     optional=True)
    if needs.judge:
        kubernetes.use_secret_as_env(task, s.secrets.judge_secret, {k: k for k in s.secrets.judge_keys},
                                     optional=True)
    if needs.retry:
        r = s.retry
        task.set_retry(num_retries=r.num_retries, backoff_duration=r.backoff_duration,
                       backoff_factor=r.backoff_factor, backoff_max_duration=r.backoff_max_duration)
    if not needs.cache:
        task.set_caching_options(False)
    return task

