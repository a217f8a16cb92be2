"""An S3 outage during an upload: the SeaweedFS server is killed (SIGKILL) mid-upload and
restarted by `visalign stack up`; store.upload_dir must ride it out and leave every object intact."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time

import pytest

from visalign.infra import stack as stack_api
from visalign.infra import store

pytestmark = pytest.mark.integration

SMALL_FILES = 24  # 1-4 MiB each, single PUTs
BIG_FILE_MIB = 40  # over MULTIPART_PART_SIZE (16 MiB): a 3-part multipart upload
OUTAGE_SECONDS = 2.0


def make_model_dir(root, rng: random.Random) -> list[str]:
    """Files that sort as: 12 shards, the big file, 12 more shards (random bytes: no dedup)."""
    names = [f"a-shard-{i:02d}.bin" for i in range(SMALL_FILES // 2)] + ["m-big.bin"]
    names += [f"z-shard-{i:02d}.bin" for i in range(SMALL_FILES - SMALL_FILES // 2)]
    root.mkdir(parents=True)
    for name in names:
        mib = BIG_FILE_MIB if name == "m-big.bin" else rng.randint(1, 4)
        (root / name).write_bytes(rng.randbytes(mib * 1024 * 1024))
    return names


def test_upload_survives_an_s3_server_killed_and_restarted(stack_settings, tmp_path, monkeypatch, caplog):
    s = stack_settings
    info = stack_api.up(s)
    try:
        for key, value in info.env.items():
            monkeypatch.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "60")
        caplog.set_level(logging.INFO, logger="visalign.infra.store")
        src = tmp_path / "model"
        names = make_model_dir(src, random.Random(7))
        prefix = f"s3://{s.bucket}/outage/model"
        bucket, key = store.split_s3(prefix)

        outcome: dict[str, object] = {}

        def upload() -> None:
            start = time.monotonic()
            try:
                outcome["report"] = store.upload_dir(src, prefix)
            except BaseException as e:  # re-raised by the main thread
                outcome["error"] = e
            outcome["seconds"] = time.monotonic() - start

        thread = threading.Thread(target=upload, name="upload", daemon=True)
        thread.start()
        # Kill once the 12 shards before the big file are up, so the kill lands in the multipart
        # upload (or just after it); the listing also proves objects were stored before the kill.
        probe = stack_api._s3_client(s)
        deadline = time.monotonic() + 60
        while len(list(probe.list_objects(bucket, prefix=key + "/"))) < SMALL_FILES // 2:
            assert thread.is_alive() and time.monotonic() < deadline, "the upload ended before the kill"
            time.sleep(0.02)
        stored_before_kill = len(list(probe.list_objects(bucket, prefix=key + "/")))
        os.kill(info.pids["s3"], signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(OUTAGE_SECONDS)
        again = stack_api.up(s)  # restarts the dead S3 server only
        restarted_after = time.monotonic() - killed_at
        assert again.pids["mlflow"] == info.pids["mlflow"] and again.pids["s3"] != info.pids["s3"]

        thread.join(timeout=120)
        assert not thread.is_alive(), "the upload hung after the restart"
        if "error" in outcome:
            raise AssertionError("the upload did not survive the outage") from outcome["error"]
        assert outcome["report"].copied == sorted(names)

        objects = list(probe.list_objects(bucket, prefix=key + "/", recursive=True))
        assert len(objects) == len(names)
        for o in objects:
            etag = o.etag.strip('"')
            assert etag == store.file_etag(src / o.object_name[len(key) + 1:], like=etag), o.object_name
        assert any(o.etag.strip('"').endswith("-3") for o in objects)  # the big file went up in 3 parts

        retries = [r.getMessage() for r in caplog.records if "transient error" in r.getMessage()]
        assert retries, "no retry was logged: the kill missed the upload"
        print(f"\nupload {outcome['seconds']:.1f} s; {stored_before_kill} of {len(names)} objects stored "
              f"before the kill; S3 back {restarted_after:.1f} s after it; {len(retries)} retries:\n  "
              + "\n  ".join(retries))
    finally:
        stack_api.down(s)
