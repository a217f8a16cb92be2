"""Thin MLflow helpers for train, evaluate and register: where to log, one run, flat params, metrics.

The tracking server is named by MLFLOW_TRACKING_URI (the exports of `visalign stack up` locally, a
secret or env of the pod on a cluster); artifacts go through the server's proxy, so a client needs
no S3 credentials for them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

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
