"""Run project code in a new process: what is read at import (the pipelines' image and cluster
settings) then comes from that process's environment, as in the chart's upload Job."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_fresh(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m ARGS` in a new process with `env` added: the pipelines read their image and cluster
    settings at import, so a compile with other settings needs a process of its own (as the chart's
    upload Job has). Fails the test with the process's output when it exits non-zero."""
    proc = subprocess.run([sys.executable, "-m", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def compile_fresh(out_dir: Path, env: dict[str, str]) -> dict[str, tuple[dict, dict]]:
    """Every pipeline compiled in a new process with `env`: recipe -> (pipeline spec, platform spec)."""
    import yaml

    run_fresh(["visalign_pipelines.compile", "--out-dir", str(out_dir)], env)
    docs = {p.stem: list(yaml.safe_load_all(p.read_text())) for p in sorted(out_dir.glob("*.yaml"))}
    return {name: (d[0], d[1] if len(d) > 1 else {}) for name, d in docs.items()}
