"""Thin MLflow helpers for train, evaluate and register: where to log, one run, flat params, metrics.

The tracking server is named by MLFLOW_TRACKING_URI (the exports of `visalign stack up` locally, a
secret or env of the pod on a cluster); artifacts go through the server's proxy, so a client needs
no S3 credentials for them.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from visalign.errors import StageError

log = logging.getLogger(__name__)


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else a ./mlflow.db SQLite store (with a warning: nothing reaches a server).

    SQLite rather than ./mlruns: MLflow 3 refuses the file store, and the registry needs a database.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    local = f"sqlite:///{Path('mlflow.db').resolve()}"
    log.warning("MLFLOW_TRACKING_URI is not set: logging to the local store %s; to use the "
                "tracking server run `visalign stack up` and eval its exports", local)
    return local


class TrackingUnreachable(StageError):
    """The MLflow tracking server does not answer (checked up front: MLflow's own client retries ~250 s)."""


# MLflow's server answers /health; a proxy in front of it may not, and then any API call shows it is up.
HEALTH_PATHS = ("/health", "/api/2.0/mlflow/experiments/search?max_results=1")


def without_credentials(uri: str) -> str:
    """The URI with any user:password@ taken out of its netloc (for messages and for urllib)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])) if "@" in parts.netloc else uri


def _status(url: str, timeout_s: float) -> int:
    """The HTTP status one GET of `url` gets; connection errors and timeouts raise (OSError)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def check_reachable(uri: str | None = None, timeout_s: float = 5.0) -> None:
    """Fail in seconds, with TrackingUnreachable, when the http(s) tracking server does not answer.

    One GET of <uri>/health (an API call when that is 404), no retries; a 401/403 counts as up (the
    server answers; credentials are the client's business). sqlite:/file: stores are not checked.
    `uri` defaults to MLFLOW_TRACKING_URI (unset: the local SQLite store, nothing to reach).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri or urlsplit(uri).scheme.lower() not in ("http", "https"):
        return
    safe = without_credentials(uri).rstrip("/")
    try:
        for path in HEALTH_PATHS:
            status = _status(safe + path, timeout_s)
            if status != 404:
                break
        if status < 400 or status in (401, 403):
            return
        problem = f"HTTP {status} from GET {path}" + (": not an MLflow server?" if status == 404 else "")
    except (OSError, ValueError) as e:  # URLError, refused, timed out, bad host or port
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        problem = f"{type(reason).__name__}: {reason}"
    raise TrackingUnreachable(
        f"MLflow tracking server {safe} is unreachable ({problem}): start it with `visalign stack up` and eval "
        f"\"$(visalign stack env)\", or set MLFLOW_TRACKING_URI to a server that is up")


def end_stale_run(run_id: str) -> bool:
    """Mark `run_id` KILLED when it is still RUNNING (its process was killed); True if it was."""
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return False
    except MlflowException as e:
        log.warning("MLflow run %s (an earlier attempt's) is not on this server: %s", run_id, e)
        return False
    client.set_terminated(run_id, status="KILLED")
    log.info("MLflow run %s was left RUNNING by a killed process: marked KILLED", run_id)
    return True


STEP_TAG = "visalign.step"  # MLflow tag: the step attempt's key (start_run(step_key=...))


def _run_with_step_key(experiment: str, step_key: str) -> str | None:
    """The run an earlier attempt with the same step key opened in `experiment`, if any."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = mlflow.MlflowClient().search_runs([found.experiment_id], filter_string=f"tags.`{STEP_TAG}` = '{step_key}'",
                                             max_results=1)
    return runs[0].info.run_id if runs else None


@contextmanager
def start_run(experiment: str, run_name: str, run_id: str | None = None,
              tags: Mapping[str, str] | None = None, step_key: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run in `experiment` (created if missing), or the run `run_id` resumed, or the run
    an earlier attempt with the same `step_key` opened (tagged STEP_TAG).

    Resuming lets a retried pipeline step keep logging to the run it started, instead of
    leaving a half-filled run behind and a new one beside it.
    """
    mlflow.set_tracking_uri(tracking_uri())
    if step_key is not None:
        run_id = run_id or _run_with_step_key(experiment, step_key)
        tags = {**(tags or {}), STEP_TAG: step_key}
    if run_id is not None:
        run = mlflow.start_run(run_id=run_id)
    else:
        experiment_id = mlflow.set_experiment(experiment).experiment_id
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {}))
    with run:  # ends the run, FAILED if the body raised
        if run_id is not None and tags:
            mlflow.set_tags(dict(tags))
        yield run


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"beta": 0.1}} -> {"train.beta": 0.1}."""
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def log_params_flat(d: Mapping[str, Any]) -> dict[str, str]:
    """Log a nested dict as flat params; values longer than MLflow's limit are cut (and say so).
    Returns what was logged."""
    params = {}
    for key, value in flatten(d).items():
        text = str(value)
        if len(text) > MAX_PARAM_VAL_LENGTH:
            marker = "...[truncated]"
            text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
        params[key] = text
    mlflow.log_params(params)
    return params


def metric_key(prefix: str, group: str, metric: str) -> str:
    """'eval', 'pope', 'f1' -> 'eval/pope/f1' (MLflow allows '/' in metric names)."""
    return "/".join(part.strip("/") for part in (prefix, group, metric) if part)


def log_metrics_prefixed(metrics: Mapping[str, Mapping[str, float]], prefix: str = "",
                         step: int | None = None) -> dict[str, float]:
    """Log {"pope": {"f1": 0.8}} as 'pope/f1' (or 'PREFIX/pope/f1'). Returns what was logged."""
    flat = {metric_key(prefix, group, name): float(value)
            for group, values in metrics.items() for name, value in values.items()}
    mlflow.log_metrics(flat, step=step)
    return flat
