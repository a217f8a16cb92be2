"""`visalign stack`: real SeaweedFS and MLflow servers started, checked and stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from visalign import cli
from visalign.infra import stack as stack_api
from visalign.infra import store


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.integration
def test_up_status_refuse_second_up_down(stack_settings, capsys):
    s = stack_settings
    # A record left by a crashed stack, whose processes are long gone: `up` must clean it.
    s.data_dir.mkdir(parents=True)
    stale = {"processes": {"s3": {"pid": dead_pid(), "start_ticks": 1}}}
    (s.data_dir / stack_api.RECORD_FILE).write_text(json.dumps(stale))

    info = stack_api.up(s)
    try:
        assert set(info.pids) == {"s3", "mlflow"}
        assert info.env["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{s.s3_port}"
        assert info.env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{s.mlflow_port}"
        record = stack_api.read_record(s)
        assert record["ready"] and {n: p["pid"] for n, p in record["processes"].items()} == info.pids
        assert oct((s.data_dir / stack_api.RECORD_FILE).stat().st_mode & 0o777) == "0o600"
        assert {n: st.answering for n, st in stack_api.status(s).items()} == {"s3": True, "mlflow": True}
        # Every weed port is one of ours, and weed listens on it: nothing left at weed's defaults.
        assert set(stack_api.busy_ports(s)) == set(s.ports)

        with pytest.raises(stack_api.StackError, match="still running.*visalign stack down"):
            stack_api.up(s)
        assert stack_api.read_record(s)["processes"]["s3"]["pid"] == info.pids["s3"]  # untouched

        # Status needs only the data dir: the record knows the ports the stack was started with.
        args = ["stack", "status", "--data-dir", str(s.data_dir)]
        assert cli.main(args) == 0
        assert capsys.readouterr().out.count(" up ") == 2
    finally:
        stopped = stack_api.down(s)
    assert stopped == ["mlflow", "s3"]
    assert stack_api.read_record(s) is None
    for pid in info.pids.values():
        assert not stack_api._alive(pid)
    assert not any(st.running for st in stack_api.status(s).values())
    assert cli.main(args) == 1
    assert "down" in capsys.readouterr().out


def kill_hard(pid: int) -> None:
    """SIGKILL, as a crash or the OOM killer does, and wait until the pid is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while stack_api._alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived SIGKILL"
        time.sleep(0.05)


@pytest.mark.integration
def test_up_restarts_only_a_dead_s3_server_and_keeps_its_data(stack_settings, monkeypatch):
    s = stack_settings
    info = stack_api.up(s)
    try:
        for key, value in info.env.items():
            monkeypatch.setenv(key, value)
        store.write_text(f"s3://{s.bucket}/before/kill.txt", "written before the kill")
        kill_hard(info.pids["s3"])
        states = stack_api.status(s)
        assert (states["s3"].running, states["mlflow"].answering) == (False, True)

        again = stack_api.up(s)  # no `down` first: only the dead server is started
        assert again.pids["mlflow"] == info.pids["mlflow"]  # the live one is untouched
        assert again.pids["s3"] != info.pids["s3"] and stack_api._alive(again.pids["s3"])
        record = stack_api.read_record(s)
        assert record["ready"] and {n: p["pid"] for n, p in record["processes"].items()} == again.pids
        assert record["ports"] == s.ports  # the same ports and data dir as before
        assert {n: st.answering for n, st in stack_api.status(s).items()} == {"s3": True, "mlflow": True}
        # `up` returned only once S3 serves stored data again: no retry is needed for this read.
        monkeypatch.setenv("VISALIGN_S3_RETRY_SECONDS", "0")
        assert store.read_text(f"s3://{s.bucket}/before/kill.txt") == "written before the kill"
        assert (s.data_dir / "logs" / "s3.log").read_text().count(" mini -dir=") == 2  # started twice

        with pytest.raises(stack_api.StackError, match="still running"):  # both alive: nothing to do
            stack_api.up(s)
    finally:
        stopped = stack_api.down(s)
    assert stopped == ["mlflow", "s3"]


def test_up_refuses_ports_in_use_before_starting_anything(stack_settings):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", stack_settings.mlflow_port))
        taken.listen()
        with pytest.raises(stack_api.StackError, match=rf"'mlflow': {stack_settings.mlflow_port}.*--mlflow-port"):
            stack_api.up(stack_settings)
    assert stack_api.read_record(stack_settings) is None
    assert not (stack_settings.data_dir / "logs").exists()


@pytest.mark.integration
def test_readiness_timeout_shows_the_log_tail_and_stops_what_it_started(stack_settings):
    with pytest.raises(stack_api.StackError) as e:
        stack_api.up(stack_settings, timeout=0.1)
    message = str(e.value)
    assert "not ready in time" in message
    assert f"lines of {stack_settings.data_dir / 'logs'}" in message
    assert "mini -dir=" in message or "mlflow server" in message  # the command line at the log's top
    assert stack_api.read_record(stack_settings) is None
    assert stack_api.busy_ports(stack_settings) == {}


@pytest.mark.integration
def test_a_server_that_exits_early_shows_its_error(stack_settings):
    stack_settings.data_dir.mkdir(parents=True)
    (stack_settings.data_dir / "mlflow.db").write_bytes(b"this is not a SQLite database" * 100)
    start = time.monotonic()
    with pytest.raises(stack_api.StackError) as e:
        stack_api.up(stack_settings)
    assert time.monotonic() - start < stack_api.READY_TIMEOUT_SECONDS / 2  # failed fast, did not time out
    assert "mlflow server exited with code" in str(e.value)
    assert "not a database" in str(e.value)  # sqlite's own words, from the log tail
    assert stack_api.busy_ports(stack_settings) == {}  # S3 was stopped too


def test_down_kills_a_process_group_that_ignores_sigterm(stack_settings, monkeypatch):
    monkeypatch.setattr(stack_api, "STOP_GRACE_SECONDS", 0.5)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    stack_settings.data_dir.mkdir(parents=True)
    record = {"processes": {"s3": {"pid": proc.pid, "start_ticks": stack_api._start_ticks(proc.pid)}}}
    (stack_settings.data_dir / stack_api.RECORD_FILE).write_text(json.dumps(record))
    start = time.monotonic()
    assert stack_api.down(stack_settings) == ["s3"]
    assert stack_api.STOP_GRACE_SECONDS <= time.monotonic() - start < 5  # it took the SIGKILL
    assert not stack_api._alive(proc.pid)
    assert stack_api.read_record(stack_settings) is None


def test_a_reused_pid_is_not_taken_for_the_recorded_server():
    # Same pid, other start time: a later process that got the pid must never be signalled.
    me = os.getpid()
    assert stack_api._alive(me, stack_api._start_ticks(me))
    assert not stack_api._alive(me, stack_api._start_ticks(me) + 1)


@pytest.mark.integration
def test_ensure_up_reuses_the_running_stack(stack):
    start = time.monotonic()
    info = stack_api.ensure_up(stack.settings)
    assert time.monotonic() - start < 5  # no server was started
    assert info.pids == stack.pids
    assert info.mlflow_url == stack.settings.mlflow_uri


def test_settings_from_env_and_flags(tmp_path):
    environ = {"VISALIGN_STACK_DIR": str(tmp_path / "d"), "VISALIGN_S3_PORT": "19000",
               "VISALIGN_MLFLOW_PORT": "19500"}
    s = stack_api.StackSettings.from_env(environ)
    assert (s.data_dir, s.s3_port, s.mlflow_port) == (tmp_path / "d", 19000, 19500)
    assert s.ports["filer.port"] == 19006 and s.ports["admin.port.grpc"] == 29008
    assert stack_api.StackSettings.from_env(environ, s3_port=19100, mlflow_port=None).s3_port == 19100
    from visalign.recipes import ConfigError

    with pytest.raises(ConfigError, match="VISALIGN_S3_PORT='x'"):
        stack_api.StackSettings.from_env({"VISALIGN_S3_PORT": "x"})
    with pytest.raises(ConfigError, match="mlflow_port=19003: collides"):
        stack_api.StackSettings(s3_port=19000, mlflow_port=19003)


@pytest.mark.integration
def test_cli_env_prints_the_recorded_stacks_exports(stack, capsys):
    s = stack.settings
    assert cli.main(["stack", "env", "--data-dir", str(s.data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"export AWS_ENDPOINT_URL=http://127.0.0.1:{s.s3_port}\n" in out
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{s.mlflow_port}\n" in out
