"""visalign.infra.store against the real SeaweedFS S3 server of the session's stack."""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from visalign.infra import store

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix(stack) -> str:
    """A fresh prefix in the stack's bucket, so tests never see each other's objects."""
    return f"s3://{stack.settings.bucket}/tests/{uuid.uuid4().hex[:8]}"


RETRY_BUDGET = 2.0  # seconds, for the tests of transient errors


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(store, "RETRY_BASE_SECONDS", 0.1)
    monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", str(RETRY_BUDGET))


def test_put_get_exists_and_list(prefix):
    store.write_text(f"{prefix}/a/1.txt", "one")
    store.write_bytes(f"{prefix}/a/deeper/2.bin", b"\x00two")
    store.write_text(f"{prefix}/b.txt", "bee")
    assert store.read_text(f"{prefix}/a/1.txt") == "one"
    assert store.read_bytes(f"{prefix}/a/deeper/2.bin") == b"\x00two"
    assert store.exists(f"{prefix}/b.txt") and store.exists(f"{prefix}/a")
    assert not store.exists(f"{prefix}/c.txt") and not store.exists(f"{prefix}/b")
    assert store.list_uris(prefix) == [f"{prefix}/a/1.txt", f"{prefix}/a/deeper/2.bin", f"{prefix}/b.txt"]
    assert store.list_uris(prefix, recursive=False) == [f"{prefix}/a/", f"{prefix}/b.txt"]
    # A prefix is a directory: 'a' must not match 'a-sibling'.
    store.write_text(f"{prefix}/a-sibling", "x")
    assert f"{prefix}/a-sibling" not in store.list_uris(f"{prefix}/a")
    with pytest.raises(store.StoreNotFound, match=f"{prefix}/nothing: no such prefix"):
        store.list_uris(f"{prefix}/nothing")


def test_upload_and_download_dir_both_ways_and_resync_transfers_nothing(prefix, tmp_path, monkeypatch):
    monkeypatch.setattr(store, "MULTIPART_PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    src = tmp_path / "model"
    store.write_text(str(src / "config.json"), '{"a": 1}')
    store.write_bytes(str(src / "sub" / "weights.bin"), bytes(range(256)) * 100)
    store.write_bytes(str(src / "big.bin"), b"y" * (6 * 1024 * 1024))  # two parts: a multipart ETag
    store.write_bytes(str(src / "empty"), b"")
    files = ["big.bin", "config.json", "empty", "sub/weights.bin"]

    up = store.upload_dir(src, f"{prefix}/model")
    assert up.copied == files
    assert store.upload_dir(src, f"{prefix}/model").copied == []

    dst = tmp_path / "back"
    down = store.download_dir(f"{prefix}/model", dst)
    assert down.copied == files
    for rel in files:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    again = store.sync(f"{prefix}/model", dst)
    assert again.copied == [] and again.skipped == files

    # One changed file of the same size goes up alone, then comes down alone.
    store.write_text(str(src / "config.json"), '{"a": 2}')
    assert store.sync(src, f"{prefix}/model").copied == ["config.json"]
    assert store.sync(f"{prefix}/model", dst).copied == ["config.json"]
    assert (dst / "config.json").read_text() == '{"a": 2}'


def test_sync_between_two_prefixes(prefix):
    store.write_text(f"{prefix}/x/f.txt", "f")
    assert store.sync(f"{prefix}/x", f"{prefix}/y").copied == ["f.txt"]
    assert store.read_text(f"{prefix}/y/f.txt") == "f"
    assert store.sync(f"{prefix}/x", f"{prefix}/y").copied == []


def test_local_path_downloads_a_file_or_a_prefix_and_revalidates(prefix, tmp_path):
    store.write_text(f"{prefix}/m/config.json", "{}")
    store.write_text(f"{prefix}/m/tokenizer.json", "[]")
    model_dir = store.local_path(f"{prefix}/m", cache_dir=tmp_path / "cache")
    assert model_dir.is_dir() and str(model_dir).startswith(str(tmp_path / "cache"))
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "tokenizer.json"]

    one = store.local_path(f"{prefix}/m/config.json", cache_dir=tmp_path / "cache")
    assert one == model_dir / "config.json" and one.read_text() == "{}"
    store.write_text(f"{prefix}/m/config.json", '{"changed": true}')
    assert store.local_path(f"{prefix}/m/config.json", cache_dir=tmp_path / "cache").read_text() == '{"changed": true}'
    # Default cache: $VISALIGN_CACHE (the session sets it to a tmp dir).
    assert store.local_path(f"{prefix}/m").is_relative_to(store.cache_root())
    with pytest.raises(store.StoreNotFound):
        store.local_path(f"{prefix}/nothing-here", cache_dir=tmp_path / "cache")


def test_missing_key_and_missing_bucket_name_the_uri_and_the_fix(prefix):
    with pytest.raises(store.StoreNotFound) as e:
        store.read_bytes(f"{prefix}/missing.txt")
    assert f"{prefix}/missing.txt" in str(e.value) and "NoSuchKey" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(store.StoreNotFound, match="bucket 'no-such-bucket-x' does not exist.*ensure_bucket"):
        store.read_bytes("s3://no-such-bucket-x/k")
    assert not store.exists("s3://no-such-bucket-x/k")


def test_ensure_bucket_is_idempotent(stack):
    name = f"t-{uuid.uuid4().hex[:8]}"
    store.ensure_bucket(name)
    store.ensure_bucket(name)
    store.write_text(f"s3://{name}/k", "v")
    assert store.read_text(f"s3://{name}/k") == "v"


def test_wrong_credentials_fail_at_once_naming_the_env_vars(prefix, monkeypatch):
    store.write_text(f"{prefix}/k", "v")
    monkeypatch.setattr(store, "RETRY_BASE_SECONDS", 30.0)  # a retry would show in the elapsed time
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    start = time.monotonic()
    with pytest.raises(store.StoreAccessDenied) as e:
        store.read_bytes(f"{prefix}/k")
    assert time.monotonic() - start < 5
    assert f"{prefix}/k" in str(e.value)
    assert "AWS_ACCESS_KEY_ID" in str(e.value) and "AWS_SECRET_ACCESS_KEY" in str(e.value)
    assert isinstance(e.value, PermissionError)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(store.StoreAccessDenied, match="InvalidAccessKeyId"):
        store.read_bytes(f"{prefix}/k")


# ---- transient errors, through a local stand-in ------------------------------------------------

class FlakyProxy:
    """A local stand-in for a struggling S3 endpoint on 127.0.0.1: it answers the first
    `failures` requests with 503 SlowDown (S3's XML error) and forwards the rest, Host header and
    signature untouched, to the real SeaweedFS server."""

    def __init__(self, upstream_port: int, failures: int, port: int = 0):
        self.failures, self.requests = failures, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _handle(self):
                proxy.requests += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.requests <= proxy.failures:
                    xml = b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>busy</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    self.wfile.write(xml)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_slowdown_answers_are_retried_until_they_pass(prefix, stack, monkeypatch, fast_retries):
    store.write_text(f"{prefix}/k", "through the proxy")
    proxy = FlakyProxy(stack.settings.s3_port, failures=2)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        assert store.read_text(f"{prefix}/k") == "through the proxy"
        assert proxy.requests == 3
    finally:
        proxy.close()


def test_persistent_503_gives_up_when_the_retry_budget_is_spent(prefix, stack, monkeypatch, fast_retries):
    proxy = FlakyProxy(stack.settings.s3_port, failures=1000)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        start = time.monotonic()
        with pytest.raises(store.StoreError) as e:
            store.write_text(f"{prefix}/k", "never")
        assert RETRY_BUDGET <= time.monotonic() - start < RETRY_BUDGET + 2
        match = re.match(rf"{prefix}/k: gave up after (\d+\.\d) s and (\d+) attempts .*SlowDown.*"
                         r"raise VISALIGN_S3_RETRY_SECONDS", str(e.value))
        assert match, str(e.value)
        assert float(match[1]) >= RETRY_BUDGET and proxy.requests == int(match[2]) >= 5
    finally:
        proxy.close()


def test_an_endpoint_that_is_not_up_yet_is_retried(prefix, stack, monkeypatch, fast_retries):
    """Connection refused for real: nothing listens on the port until ~0.5 s later."""
    store.write_text(f"{prefix}/k", "late")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    proxies: list[FlakyProxy] = []
    timer = threading.Timer(0.5, lambda: proxies.append(FlakyProxy(stack.settings.s3_port, 0, port)))
    timer.start()
    try:
        start = time.monotonic()
        assert store.read_text(f"{prefix}/k") == "late"
        assert time.monotonic() - start >= 0.4  # it really waited for the late listener
        assert proxies and proxies[0].requests >= 1
    finally:
        timer.join()
        for p in proxies:
            p.close()
