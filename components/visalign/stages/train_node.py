"""One process of a multi-node train step: what torchrun runs on every GPU of a TrainJob's nodes.

visalign.infra.trainjob creates the TrainJob (one pod per node, `torchrun -m visalign.stages.train_node`);
each process syncs the step's inputs once per node, runs the ordinary train stage, and rank 0
uploads the adapter to the step's output URI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from visalign import recipes
from visalign.infra import store
from visalign.infra.trainjob import checkpoint_params
from visalign.stages import train

log = logging.getLogger(__name__)


def worker(argv: list[str] | None = None) -> int:
    """What torchrun runs on every GPU of every node: the ordinary train stage on synced inputs."""
    p = argparse.ArgumentParser(prog="python -m visalign.stages.train_node", description=worker.__doc__)
    for flag in ("--pairs", "--model", "--output-uri", "--recipe", "--profile", "--experiment"):
        p.add_argument(flag, required=True)
    p.add_argument("--overrides", default="{}")
    args = p.parse_args(argv)
    recipe = recipes.load(args.recipe, args.profile, json.loads(args.overrides))
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # train.run logs params from every process: only rank 0 reports to the server
        os.environ["MLFLOW_TRACKING_URI"] = Path(tempfile.mkdtemp(prefix="mlruns-")).as_uri()
    # Every process of a node shares one download cache: fetch inputs one process at a time
    # (the sync is idempotent, so the later ones find them in place).
    with _node_lock(f"{tempfile.gettempdir()}/visalign-sync.lock"):
        pairs_dir = store.local_path(args.pairs)
        if store.is_s3(args.model):
            store.local_path(args.model)  # train.run's own sync then finds it current
    out = Path(tempfile.mkdtemp(prefix="visalign-adapter-"))
    train.run(pairs_dir=str(pairs_dir), model=args.model, output_dir=str(out),
              params=checkpoint_params(recipe.train, args.output_uri), recipe=recipe, experiment=args.experiment)
    if rank == 0:
        store.upload_dir(out, args.output_uri)
        log.info("rank 0: adapter uploaded to %s", args.output_uri)
    return 0


@contextlib.contextmanager
def _node_lock(path: str) -> Iterator[None]:
    import fcntl

    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


if __name__ == "__main__":
    from visalign.report import setup_logging

    setup_logging()
    raise SystemExit(worker())
