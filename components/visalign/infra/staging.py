"""s3:// inputs and outputs for stages run from the `visalign` command.

A stage works on local directories. For an s3:// input the command hands it a synced local copy
(store.local_path, re-validated by ETag); for an s3:// output it hands it a staging directory in
the cache, first filled with what is already at the URI (so a re-run resumes from it), and uploads
that directory when the stage ends, also when it fails: the finished part of the work is kept.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from visalign.infra import store

log = logging.getLogger(__name__)


def local_input(uri: str) -> str:
    """A local path for an input directory given as a path, file:// or s3:// URI."""
    return str(store.local_path(uri))  # a synced copy of s3://; other schemes (gs://, ...) refused by name


@contextmanager
def staged_output(uri: str) -> Iterator[str]:
    """The local directory a stage writes `uri` through (the path itself when it is local)."""
    if not store.is_s3(uri):
        yield str(store.local_path(uri))  # refuses other schemes (gs://, ...) by name
        return
    bucket, key = store.split_s3(uri)
    local = store.cache_root() / "outputs" / store.s3_config().endpoint.replace(":", "_") / bucket / key.rstrip("/")
    # The bucket is the truth: a copy left in the cache by an earlier run (of an output since deleted
    # or changed) must not come back and be uploaded again.
    shutil.rmtree(local, ignore_errors=True)
    if store.exists(uri):
        store.download_dir(uri, local)
    local.mkdir(parents=True, exist_ok=True)
    failed = False
    try:
        yield str(local)
    except BaseException:
        failed = True
        raise
    finally:
        _upload(local, uri, failed)


def _upload(local: Path, uri: str, failed: bool) -> None:
    if not any(local.rglob("*")):
        return
    try:
        report = store.upload_dir(local, uri)
        log.info("output %s: %d files uploaded (%d already there)%s", uri, len(report.copied), len(report.skipped),
                 "; the stage failed, its finished part is kept for a re-run" if failed else "")
    except store.StoreError:
        if not failed:
            raise
        log.exception("output %s: uploading the failed stage's partial output failed too", uri)
