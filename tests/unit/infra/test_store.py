"""visalign.infra.store on local paths and file:// URIs, plus its S3 settings and retry policy (no server)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import urllib3
from minio.error import S3Error, ServerError

from visalign.errors import InputError, StageError
from visalign.infra import store


def test_text_and_bytes_round_trip_creating_parents(tmp_path):
    uri = str(tmp_path / "a" / "b" / "c.txt")
    store.write_text(uri, "héllo")
    assert store.read_text(uri) == "héllo"
    assert store.read_bytes(uri) == "héllo".encode()
    store.write_bytes(uri, b"\x00\x01")  # overwrite
    assert store.read_bytes(uri) == b"\x00\x01"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["c.txt"]  # no temp file left


def test_file_uri_is_the_same_file_as_the_path(tmp_path):
    store.write_text(f"file://{tmp_path}/x.json", "{}")
    assert (tmp_path / "x.json").read_text() == "{}"
    assert store.read_text(str(tmp_path / "x.json")) == "{}"
    assert store.local_path(f"file://{tmp_path}/x.json") == tmp_path / "x.json"
    assert store.local_path(tmp_path / "x.json") == tmp_path / "x.json"
    assert store.local_path("file:///a%20b/c") == Path("/a b/c")
    with pytest.raises(store.StoreError, match="needs an absolute path"):
        store.local_path("file://relative/x")


def test_missing_file_names_the_uri_and_is_a_file_not_found(tmp_path):
    uri = str(tmp_path / "nope.txt")
    with pytest.raises(store.StoreNotFound) as e:
        store.read_text(uri)
    assert isinstance(e.value, FileNotFoundError)
    assert uri in str(e.value) and e.value.uri == uri


def test_unsupported_scheme_is_refused_instead_of_becoming_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(store.StoreError, match="unsupported URI scheme"):
        store.write_text("gs://bucket/key", "x")
    assert not (tmp_path / "gs:").exists()


def test_exists(tmp_path):
    store.write_text(str(tmp_path / "d" / "f"), "x")
    assert store.exists(tmp_path / "d" / "f")
    assert store.exists(f"file://{tmp_path}/d")
    assert not store.exists(tmp_path / "d" / "g")


def test_list_uris_recursive_and_not(tmp_path):
    for rel in ("b.txt", "a/1.txt", "a/deeper/2.txt"):
        store.write_text(str(tmp_path / rel), rel)
    root = str(tmp_path)
    assert store.list_uris(root) == [f"{root}/a/1.txt", f"{root}/a/deeper/2.txt", f"{root}/b.txt"]
    assert store.list_uris(root, recursive=False) == [f"{root}/a/", f"{root}/b.txt"]
    # A file:// prefix gives file:// URIs back, so they can be passed on as they are.
    assert store.list_uris(f"file://{root}/a") == [f"file://{root}/a/1.txt", f"file://{root}/a/deeper/2.txt"]
    with pytest.raises(store.StoreNotFound, match="no such directory"):
        store.list_uris(str(tmp_path / "missing"))


def test_sync_copies_then_skips_then_recopies_only_changed_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel, text in (("m/config.json", "{}"), ("m/weights.bin", "abcd"), ("readme", "hi")):
        store.write_text(str(src / rel), text)
    store.write_text(str(dst / "only-here"), "kept")

    first = store.sync(src, dst)
    assert first.copied == ["m/config.json", "m/weights.bin", "readme"] and first.skipped == []
    assert (dst / "m" / "weights.bin").read_text() == "abcd"

    again = store.sync(src, dst)
    assert again.copied == [] and len(again.skipped) == 3

    # Same size, different bytes: only the MD5 tells them apart.
    store.write_text(str(src / "m" / "weights.bin"), "abce")
    changed = store.sync(f"file://{src}", f"file://{dst}")
    assert changed.copied == ["m/weights.bin"]
    assert (dst / "m" / "weights.bin").read_text() == "abce"
    assert (dst / "only-here").read_text() == "kept"  # sync never deletes


def test_sync_refuses_a_file_and_a_missing_source(tmp_path):
    store.write_text(str(tmp_path / "f"), "x")
    with pytest.raises(store.StoreError, match="is a file"):
        store.sync(tmp_path / "f", tmp_path / "out")
    with pytest.raises(store.StoreNotFound, match="nothing to sync"):
        store.sync(tmp_path / "missing", tmp_path / "out")


def test_file_etag_single_part_is_the_md5(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    assert store.file_etag(path) == hashlib.md5(b"hello").hexdigest() == "5d41402abc4b2a76b9719d911017c592"


def test_file_etag_multipart_matches_what_an_s3_server_returned(tmp_path, monkeypatch):
    # SeaweedFS 4.48 answered this ETag for 6 MiB of b"x" put by minio with 5 MiB parts.
    monkeypatch.setattr(store, "MULTIPART_PART_SIZE", 5 * 1024 * 1024)
    path = tmp_path / "big"
    path.write_bytes(b"x" * (6 * 1024 * 1024))
    assert store.file_etag(path, like="anything-2") == "7d368e72ecdd3ff1d9b28f29481a125f-2"


def test_s3_config_names_every_missing_variable(monkeypatch):
    for name in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(store.StoreConfigError) as e:
        store.read_bytes("s3://bucket/key")
    assert str(e.value).startswith("s3://bucket/key: ")
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name in str(e.value)


def test_s3_config_from_env(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "https://minio.example:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    cfg = store.s3_config()
    assert (cfg.endpoint, cfg.secure, cfg.region) == ("minio.example:9000", True, "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")
    assert (store.s3_config().endpoint, store.s3_config().secure) == ("127.0.0.1:8333", False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:8333")
    with pytest.raises(store.StoreConfigError, match="must look like http://HOST:PORT"):
        store.s3_config()


def s3_error(code: str, status: int) -> S3Error:
    response = urllib3.HTTPResponse(status=status)
    return S3Error(response, code, "msg", "/b/k", "req", None, "b", "k")


@pytest.mark.parametrize(("error", "transient"), [
    (s3_error("SlowDown", 503), True),
    (s3_error("InternalError", 500), True),
    (s3_error("WhateverNew", 502), True),
    (s3_error("NoSuchKey", 404), False),
    (s3_error("AccessDenied", 403), False),
    (ServerError("boom", 503), True),
    (ServerError("odd", 418), False),
    (urllib3.exceptions.NewConnectionError(None, "refused"), True),
    (ConnectionResetError(), True),
    (ValueError("bad bucket name"), False),
])
def test_is_transient(error, transient):
    assert store.is_transient(error) is transient


def test_call_retries_transient_errors_with_growing_backoff(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(store.time, "sleep", sleeps.append)
    outcomes = [s3_error("SlowDown", 503), s3_error("SlowDown", 503), urllib3.exceptions.ProtocolError("reset")]

    def flaky():
        if outcomes:
            raise outcomes.pop(0)
        return "ok"

    assert store._call("s3://b/k", flaky) == "ok"
    assert len(sleeps) == 3
    # Each delay lies in [0.5, 1] x base x 2^n: the upper bounds double.
    for n, delay in enumerate(sleeps):
        assert 0.5 * store.RETRY_BASE_SECONDS * 2**n <= delay <= store.RETRY_BASE_SECONDS * 2**n


class FakeClock:
    """Stands in for store's `time` module: sleep() advances monotonic() at once."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(store, "time", fake)
    monkeypatch.delenv("VISALIGN_S3_RETRY_SECONDS", raising=False)
    return fake


def test_call_gives_up_when_the_retry_budget_is_spent(clock, monkeypatch):
    monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "60")
    calls = []

    def down():
        calls.append(clock.now)
        raise ServerError("unavailable", 503)

    with pytest.raises(store.StoreError) as e:
        store._call("s3://b/k", down)
    message = str(e.value)
    assert message.startswith(f"s3://b/k: gave up after 60.0 s and {len(calls)} attempts")
    assert "ServerError" in message and "is the S3 endpoint up?" in message
    assert "raise VISALIGN_S3_RETRY_SECONDS (now 60)" in message
    assert isinstance(e.value, StageError) and isinstance(e.value, RuntimeError)
    # Backoff capped at RETRY_MAX_SECONDS; the last sleep is cut to end exactly at the budget.
    assert sum(clock.sleeps) == pytest.approx(60.0)
    assert max(clock.sleeps) <= store.RETRY_MAX_SECONDS
    assert len(calls) == len(clock.sleeps) + 1 and 9 <= len(calls) <= 20


def test_call_outlasts_an_outage_longer_than_the_old_five_attempts(clock):
    start = clock.now

    def restarting():  # down for 40 s, as a server restart can be; the default budget is 120 s
        if clock.now - start < 40:
            raise urllib3.exceptions.NewConnectionError(None, "refused")
        return "back"

    assert store._call("s3://b/k", restarting) == "back"
    assert 40 <= sum(clock.sleeps) <= 40 + store.RETRY_MAX_SECONDS


def test_the_budget_counts_from_the_first_failure_not_the_call(clock, monkeypatch):
    monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "60")
    outcomes = ["slow failure", "ok"]

    def long_upload():  # 100 s of transfer, then the connection drops: still worth a retry
        if outcomes.pop(0) == "slow failure":
            clock.now += 100
            raise ConnectionResetError()
        return "uploaded"

    assert store._call("s3://b/k", long_upload) == "uploaded"
    assert len(clock.sleeps) == 1


def test_retry_seconds_setting(clock, monkeypatch):
    assert store.retry_seconds() == store.RETRY_SECONDS_DEFAULT == 120
    monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "2.5")
    assert store.retry_seconds() == 2.5
    monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "0")  # one attempt, no retry
    with pytest.raises(store.StoreError, match="gave up after 0.0 s and 1 attempts"):
        store._call("s3://b/k", raising(ServerError("unavailable", 503)))
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", bad)
        # Refused before the first request, not only once the endpoint fails.
        with pytest.raises(store.StoreConfigError, match=rf"s3://b/k: VISALIGN_S3_RETRY_SECONDS='{bad}' must be a number"):
            store._call("s3://b/k", lambda: pytest.fail("must not be called"))
    assert clock.sleeps == []


def test_read_text_refuses_bytes_that_are_not_utf8_naming_the_file_and_offset(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"ok\nbad \xff here")
    with pytest.raises(InputError, match=rf"{path}: not UTF-8 text: byte 0xff at offset 7 \(line 2\)"):
        store.read_text(path)
    assert issubclass(store.StoreError, StageError) and issubclass(store.StoreNotFound, FileNotFoundError)


def raising(error: Exception):
    def fn():
        raise error
    return fn


def test_call_raises_non_transient_errors_at_once(monkeypatch):
    monkeypatch.setattr(store.time, "sleep", lambda s: pytest.fail("must not retry"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    with pytest.raises(store.StoreNotFound, match="s3://b/k: no such object"):
        store._call("s3://b/k", raising(s3_error("NoSuchKey", 404)))
    with pytest.raises(store.StoreNotFound, match="bucket 'b' does not exist.*ensure_bucket"):
        store._call("s3://b/k", raising(s3_error("NoSuchBucket", 404)))
    with pytest.raises(store.StoreAccessDenied, match="AWS_SECRET_ACCESS_KEY"):
        store._call("s3://b/k", raising(s3_error("SignatureDoesNotMatch", 403)))
