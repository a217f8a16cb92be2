"""Run a pipeline on this machine through kfp.local's SubprocessRunner (the demo and the tests).

The components run as subprocesses of this Python (use_venv=False: the stages are installed
here already), so the very pipeline that runs on a cluster runs locally; Kubernetes settings
(GPU pool, /dev/shm) are ignored by kfp.local.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

STAGE_TASKS = {  # KFP task name -> stage name, in pipeline order
    "sample": "sample", "augment": "augment", "rollout": "rollout", "filter-pairs": "filter",
    "train": "train", "evaluate": "evaluate", "register": "register",
}
# Pipelines whose tasks differ from seva's (STAGE_TASKS); stage_reports picks by the run's pipeline.
PIPELINE_TASKS: dict[str, dict[str, str]] = {
    "seva": STAGE_TASKS,
    "mia-dpo": {"sample": "sample", "compose": "compose", "mia-rollout": "rollout", "select-pairs": "select",
                "train": "train", "evaluate": "evaluate", "register": "register"},
    "mpo": {"sample": "sample", "mpo-rollout": "rollout", "mpo-pairs": "pairs", "train": "train",
            "evaluate": "evaluate", "register": "register"},
}


def run_pipeline(name: str, arguments: dict[str, Any], pipeline_root: str | os.PathLike,
                 enable_caching: bool = False) -> Path:
    """Run pipeline `name` with `arguments`; returns the run's output directory."""
    from kfp import local
    from visalign_pipelines import pipelines

    fns = pipelines()
    if name not in fns:
        raise ValueError(f"pipeline {name!r}: unknown; available: {sorted(fns)}")
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    # kfp.local deletes its workspace after each run and leaves temp folders in TMPDIR: give it its own.
    workspace = tempfile.mkdtemp(prefix="kfp-workspace-")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), workspace_root=workspace,
               raise_on_error=True, enable_caching=enable_caching, cache_root=str(root / ".kfp_cache"))
    start = time.monotonic()
    fns[name](**arguments)
    new = sorted((p for p in set(root.iterdir()) - before if p.is_dir() and not p.name.startswith(".")),
                 key=lambda p: p.stat().st_mtime)
    if not new:
        raise RuntimeError(f"kfp.local wrote no run directory under {root}")
    run_dir = new[-1]
    (run_dir / "_run.json").write_text(json.dumps({"pipeline": name, "seconds": round(time.monotonic() - start, 2)}))
    return run_dir


def stage_reports(run_dir: str | os.PathLike, pipeline: str | None = None) -> dict[str, dict[str, Any]]:
    """Stage name -> its report.json, for every stage the run completed (pipeline: from _run.json)."""
    if pipeline is None and (Path(run_dir) / "_run.json").exists():
        pipeline = json.loads((Path(run_dir) / "_run.json").read_text()).get("pipeline")
    reports = {}
    for task, stage in PIPELINE_TASKS.get(pipeline or "seva", STAGE_TASKS).items():
        found = sorted(Path(run_dir).glob(f"{task}/*/report.json"))
        if found:
            reports[stage] = json.loads(found[0].read_text())
    return reports


def find_output(run_dir: str | os.PathLike, task: str, output: str) -> Path:
    path = Path(run_dir) / task / output
    if not path.exists():
        raise FileNotFoundError(f"{path}: the run has no output {output!r} of task {task!r}")
    return path
