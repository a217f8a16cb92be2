"""One URI API over local paths, file:// URIs and s3:// URIs (MinIO, SeaweedFS or any S3 service).

    write_text("s3://visalign/runs/1/report.json", text)   # same call for a local path
    upload_dir("out/model", "s3://visalign/models/m1")      # re-running transfers nothing
    local_path("s3://visalign/models/m1")                   # -> a synced local copy, for from_pretrained

S3 settings come from the environment, locally (`visalign stack up`'s exports) as in a pod (a
secret): AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION. Transient failures (connection errors, HTTP 5xx, SlowDown...) are retried with
backoff for up to VISALIGN_S3_RETRY_SECONDS (default 120 s); other errors raise at once, naming the fix.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError

from visalign.errors import StageError
from visalign.inputs import decode_text

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_SECONDS_ENV = "VISALIGN_S3_RETRY_SECONDS"
RETRY_SECONDS_DEFAULT = 120.0  # how long one call keeps retrying an outage: past a server restart
RETRY_BASE_SECONDS = 0.5  # first backoff; doubles each retry
RETRY_MAX_SECONDS = 8.0
CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 300.0  # a multi-GB model part on a slow link
# Uploads use this part size, so the multipart ETag of a local file can be computed to compare.
MULTIPART_PART_SIZE = 16 * 1024 * 1024

TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                             "OperationAborted", "XMinioServerNotInitialized"})
CREDENTIAL_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
CREDENTIALS_FIX = ("check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (for the local stack: "
                   "eval \"$(visalign stack env)\")")


class StoreError(StageError):
    """A storage operation failed; the message names the URI and what to do (a RuntimeError)."""

    def __init__(self, uri: str, message: str):
        self.uri, self.message = uri, message
        super().__init__(f"{uri}: {message}")


class StoreNotFound(StoreError, FileNotFoundError):
    """No such object, bucket, file or directory (also a FileNotFoundError)."""


class StoreAccessDenied(StoreError, PermissionError):
    """The credentials were refused (also a PermissionError)."""


class StoreConfigError(StoreError):
    """The environment lacks the endpoint or credentials an s3:// URI needs."""


@dataclass(frozen=True)
class S3Config:
    endpoint: str  # host:port
    secure: bool
    access_key: str
    secret_key: str = field(repr=False)
    region: str


@dataclass
class SyncReport:
    """What a directory sync did, by path relative to the synced directory."""
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ---- URIs ------------------------------------------------------------------------------------
def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key")."""
    parts = urlsplit(str(uri))
    if parts.scheme != "s3" or not parts.netloc:
        raise StoreError(str(uri), "not an s3:// URI; write it as s3://BUCKET/KEY")
    return parts.netloc, parts.path.lstrip("/")


def _local(uri: str | os.PathLike) -> Path:
    text = str(uri)
    if text.startswith("file://"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise StoreError(text, "a file:// URI needs an absolute path: file:///path/to/file")
        return Path(unquote(parts.path))
    if "://" in text:  # e.g. gs://: refuse rather than create a local folder named 'gs:'
        raise StoreError(text, "unsupported URI scheme; use a local path, file:// or s3://")
    return Path(text)


def _join(base: str, rel: str) -> str:
    return base.rstrip("/") + "/" + rel if rel else base


def _dir_key(key: str) -> str:
    """Treat an S3 prefix as a directory: 'models/m1' lists 'models/m1/...' but not 'models/m10'."""
    return key if not key or key.endswith("/") else key + "/"


# ---- the S3 client ---------------------------------------------------------------------------
def s3_config() -> S3Config:
    """The S3 settings from the environment, or a StoreConfigError naming the missing variables."""
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL") or env.get("MLFLOW_S3_ENDPOINT_URL")
    missing = [n for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(n)]
    if not endpoint:
        missing.insert(0, "AWS_ENDPOINT_URL (or MLFLOW_S3_ENDPOINT_URL)")
    if missing:
        raise StoreConfigError("s3://", f"s3:// URIs need {', '.join(missing)} set; for the local stack "
                               "run `visalign stack up` and eval its exports")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StoreConfigError("s3://", f"AWS_ENDPOINT_URL={endpoint!r} must look like http://HOST:PORT or https://HOST")
    return S3Config(parts.netloc, parts.scheme == "https", env["AWS_ACCESS_KEY_ID"],
                    env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_DEFAULT_REGION") or "us-east-1")


@lru_cache(maxsize=8)
def _client_for(cfg: S3Config) -> Minio:
    # retries=False: minio's built-in urllib3 retry gives up on 5xx without the S3 error code and
    # never retries POST (multipart completion); _call retries every transient failure instead.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_SECONDS, read=READ_TIMEOUT_SECONDS),
                               retries=False, maxsize=10)
    return Minio(cfg.endpoint, cfg.access_key, cfg.secret_key, secure=cfg.secure, region=cfg.region, http_client=http)


def client() -> Minio:
    """A minio client for the current environment (cached per endpoint and credentials)."""
    return _client_for(s3_config())


def is_transient(error: BaseException) -> bool:
    """Worth retrying: the network, a server that is starting or overloaded, HTTP 5xx."""
    if isinstance(error, S3Error):
        return error.code in TRANSIENT_CODES or (getattr(error.response, "status", None) or 0) >= 500
    if isinstance(error, ServerError):
        return error.status_code >= 500
    if isinstance(error, InvalidResponseError):  # a non-XML answer, e.g. a proxy's 503 page
        return getattr(error, "_code", 0) >= 500
    return isinstance(error, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def _translate(uri: str, error: Exception) -> Exception:
    """A non-transient error as a StoreError whose message says what to do."""
    if isinstance(error, StoreConfigError):  # raised before the URI was known
        return StoreConfigError(uri, error.message)
    if isinstance(error, StoreError):
        return error
    if not isinstance(error, S3Error):
        return StoreError(uri, f"{type(error).__name__}: {error}")
    where = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    if error.code == "NoSuchKey":
        return StoreNotFound(uri, f"no such object at {where} (NoSuchKey)")
    if error.code == "NoSuchBucket":
        return StoreNotFound(uri, f"bucket '{split_s3(uri)[0]}' does not exist at {where} (NoSuchBucket); create it "
                             "with visalign.infra.store.ensure_bucket, or `visalign stack up` for the local stack")
    if error.code in CREDENTIAL_CODES:
        return StoreAccessDenied(uri, f"access denied by {where} ({error.code}); {CREDENTIALS_FIX}")
    return StoreError(uri, f"S3 error {error.code}: {error.message}")


def retry_seconds(uri: str = "s3://") -> float:
    """The retry budget from VISALIGN_S3_RETRY_SECONDS (default 120), or a StoreConfigError."""
    text = os.environ.get(RETRY_SECONDS_ENV, "").strip()
    try:
        if (seconds := float(text or RETRY_SECONDS_DEFAULT)) >= 0:  # NaN fails this too
            return seconds
    except ValueError:
        pass
    raise StoreConfigError(uri, f"{RETRY_SECONDS_ENV}={text!r} must be a number of seconds >= 0 (how long "
                           f"to retry an unreachable S3 endpoint; default {RETRY_SECONDS_DEFAULT:g})")


def _call(uri: str, fn: Callable[[], T]) -> T:
    """fn() with backoff on transient errors for up to retry_seconds(), counted from the first
    failure (a long upload that fails late still gets the whole budget); others raise at once."""
    budget = retry_seconds(uri)
    first_failure, attempt = None, 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # classified right below
            if not is_transient(e):
                raise _translate(uri, e) from e
            first_failure = time.monotonic() if first_failure is None else first_failure
            waited = time.monotonic() - first_failure
            if waited >= budget:
                raise StoreError(uri, f"gave up after {waited:.1f} s and {attempt} attempts on "
                                 f"transient errors, the last: {type(e).__name__}: {e}; is the S3 endpoint "
                                 f"up? To wait longer for it, raise {RETRY_SECONDS_ENV} (now {budget:g})") from e
            # Jitter keeps parallel shards that failed together from retrying together.
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** min(attempt - 1, 20))
            delay = min(budget - waited, delay * random.uniform(0.5, 1.0))
            log.warning("%s: transient error (%s: %s), retry %d in %.1f s (%.0f of %g s left)", uri,
                        type(e).__name__, e, attempt, delay, budget - waited, budget)
            time.sleep(delay)


def _write_local(path: Path, write: Callable[[Path], object]) -> None:
    """write(a temp file beside path), then rename it: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _local_call(uri: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except FileNotFoundError as e:
        raise StoreNotFound(uri, f"no such file or directory ({e.filename})") from e
    except PermissionError as e:
        raise StoreAccessDenied(uri, f"permission denied ({e.filename})") from e


# ---- single objects --------------------------------------------------------------------------
def read_bytes(uri: str | os.PathLike) -> bytes:
    uri = str(uri)
    if not is_s3(uri):
        return _local_call(uri, _local(uri).read_bytes)
    bucket, key = split_s3(uri)

    def get() -> bytes:
        response = client().get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return _call(uri, get)


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    uri = str(uri)
    if is_s3(uri):
        bucket, key = split_s3(uri)
        _call(uri, lambda: client().put_object(bucket, key, io.BytesIO(data), len(data)))
    else:
        _local_call(uri, lambda: _write_local(_local(uri), lambda tmp: tmp.write_bytes(data)))


def read_text(uri: str | os.PathLike) -> str:
    return decode_text(read_bytes(uri), str(uri))


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str | os.PathLike) -> bool:
    """True for a file or object, and for a directory or a prefix with objects under it."""
    uri = str(uri)
    if not is_s3(uri):
        return _local(uri).exists()
    bucket, key = split_s3(uri)
    if key and not key.endswith("/"):
        try:
            _call(uri, lambda: client().stat_object(bucket, key))
            return True
        except StoreNotFound:
            pass
    try:
        return bool(_call(uri, lambda: next(iter(client().list_objects(bucket, prefix=_dir_key(key))), None)))
    except StoreNotFound:  # no such bucket
        return False


def list_uris(prefix_uri: str | os.PathLike, recursive: bool = True) -> list[str]:
    """The files under a directory or S3 prefix, sorted, as URIs in the prefix's own form;
    recursive=False lists only the direct children, directories ending with '/'. A missing
    directory or an S3 prefix with nothing under it raises StoreNotFound."""
    prefix_uri = str(prefix_uri)
    if not is_s3(prefix_uri):
        root = _local(prefix_uri)
        if not root.is_dir():
            raise StoreNotFound(prefix_uri, "no such directory")
        paths = root.rglob("*") if recursive else root.iterdir()
        rels = [p.relative_to(root).as_posix() + ("/" if p.is_dir() else "")
                for p in paths if p.is_file() or not recursive]
        return sorted(_join(prefix_uri, r) for r in rels)
    bucket, key = split_s3(prefix_uri)
    prefix = _dir_key(key)
    objects = _call(prefix_uri, lambda: list(client().list_objects(bucket, prefix=prefix, recursive=recursive)))
    if not objects:  # S3 has no empty directories: as a missing local directory does, say so
        raise StoreNotFound(prefix_uri, "no such prefix (no objects under it)")
    rels = [o.object_name[len(prefix):] for o in objects]
    return sorted(_join(prefix_uri, r) for r in rels if r and (not recursive or not r.endswith("/")))


def ensure_bucket(name: str) -> None:
    """Create the bucket unless it exists (racing creators are fine)."""

    def make() -> None:
        c = client()
        if not c.bucket_exists(name):
            try:
                c.make_bucket(name)
            except S3Error as e:
                if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    _call(f"s3://{name}", make)


# ---- directories -----------------------------------------------------------------------------
def file_etag(path: Path, like: str | None = None) -> str:
    """The S3 ETag this file gets when uploaded here: its MD5, or for an ETag `like` that has a
    part count ('...-3'), the multipart form md5(md5(part1) + md5(part2) + ...)-N."""
    parts: list[bytes] = []
    whole = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(MULTIPART_PART_SIZE):
            whole.update(chunk)
            parts.append(hashlib.md5(chunk).digest())
    if like is None or "-" not in like:
        return whole.hexdigest()
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


@dataclass
class _Entry:
    uri: str
    size: int
    etag: str | None  # S3's; None for a local file (computed only when the sizes match)


def _inventory(root: str) -> dict[str, _Entry]:
    if not is_s3(root):
        base = _local(root)
        if base.is_file():
            raise StoreError(root, "is a file; sync works on directories (use read_bytes/write_bytes)")
        if not base.is_dir():
            return {}
        # Skip the temporary files of our own and minio's interrupted writes.
        return {p.relative_to(base).as_posix(): _Entry(str(p), p.stat().st_size, None)
                for p in base.rglob("*") if p.is_file() and not p.name.endswith((".tmp", ".part.minio"))}
    bucket, key = split_s3(root)
    prefix = _dir_key(key)
    objects = _call(root, lambda: list(client().list_objects(bucket, prefix=prefix, recursive=True)))
    return {o.object_name[len(prefix):]: _Entry(f"s3://{bucket}/{o.object_name}", o.size, (o.etag or "").strip('"'))
            for o in objects if not o.object_name.endswith("/")}


def _same(a: _Entry, b: _Entry) -> bool:
    if a.size != b.size:
        return False
    etag_a = a.etag or file_etag(Path(a.uri), like=b.etag)
    etag_b = b.etag or file_etag(Path(b.uri), like=a.etag)
    return etag_a == etag_b


def _copy_file(src: str, dst: str) -> None:
    if is_s3(src) and is_s3(dst):
        from minio.commonconfig import CopySource

        sb, sk = split_s3(src)
        db, dk = split_s3(dst)
        _call(dst, lambda: client().copy_object(db, dk, CopySource(sb, sk)))
    elif is_s3(src):
        bucket, key = split_s3(src)
        _local(dst).parent.mkdir(parents=True, exist_ok=True)
        _call(src, lambda: client().fget_object(bucket, key, str(_local(dst))))
    elif is_s3(dst):
        bucket, key = split_s3(dst)
        _call(dst, lambda: client().fput_object(bucket, key, src, part_size=MULTIPART_PART_SIZE))
    else:
        _write_local(_local(dst), lambda tmp: shutil.copyfile(src, tmp))


def sync(src: str | os.PathLike, dst: str | os.PathLike) -> SyncReport:
    """Copy every file under `src` to `dst` (either side local or s3://), skipping files whose
    size and ETag/MD5 already match; files only at `dst` are left alone."""
    src, dst = str(src), str(dst)
    source = _inventory(src)
    if not source and not exists(src):
        raise StoreNotFound(src, "nothing to sync: no such directory or prefix")
    target = _inventory(dst)
    report = SyncReport()
    for rel, entry in sorted(source.items()):
        if rel in target and _same(entry, target[rel]):
            report.skipped.append(rel)
            continue
        _copy_file(entry.uri, _join(dst, rel))
        report.copied.append(rel)
    log.info("sync %s -> %s: %d copied, %d already there", src, dst, len(report.copied), len(report.skipped))
    return report


def upload_dir(local_dir: str | os.PathLike, uri: str) -> SyncReport:
    return sync(local_dir, uri)


def download_dir(uri: str, local_dir: str | os.PathLike) -> SyncReport:
    return sync(uri, local_dir)


def cache_root() -> Path:
    return Path(os.environ.get("VISALIGN_CACHE") or Path.home() / ".cache" / "visalign")


def local_path(uri: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path for `uri`: the path itself, or for s3:// a synced copy of the object or prefix
    in the cache (re-validated by ETag on every call, so a changed object is fetched again)."""
    uri = str(uri)
    if not is_s3(uri):
        return _local(uri)
    bucket, key = split_s3(uri)
    # The endpoint is part of the cache path: two stacks with the same bucket name must not mix.
    host = s3_config().endpoint.replace(":", "_")
    target = Path(cache_dir or cache_root()) / "s3" / host / bucket / key.rstrip("/")
    if key and not key.endswith("/"):
        try:
            stat = _call(uri, lambda: client().stat_object(bucket, key))
        except StoreNotFound:
            stat = None
        if stat is not None:
            here = _Entry(str(target), target.stat().st_size, None) if target.is_file() else None
            there = _Entry(uri, stat.size or 0, (stat.etag or "").strip('"'))
            if here is None or not _same(here, there):
                _copy_file(uri, str(target))
            return target
    download_dir(uri, target)
    return target
