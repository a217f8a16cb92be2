"""The local stack's settings (ports, data directory, credentials; each also an environment
variable), what `visalign stack up` reports, and the client environment it exports.

visalign.infra.stack starts, stops and inspects the servers these settings describe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from visalign.recipes import ConfigError

HOST = "127.0.0.1"
REGION = "us-east-1"
# `weed mini` opens all of these; each sits at a fixed offset from s3_port so that stacks with
# different s3 ports never collide (weed's own defaults are fixed: 9333, 8888, ...).
WEED_PORT_OFFSETS = {"s3.port": 0, "s3.port.grpc": 1, "master.port": 2, "master.port.grpc": 3,
                     "volume.port": 4, "volume.port.grpc": 5, "filer.port": 6, "filer.port.grpc": 7,
                     "admin.port": 8}
# weed's maintenance worker dials admin.port + 10000 whatever -admin.port.grpc says, so the admin
# gRPC port is left at that default instead of being set.
ADMIN_GRPC_OFFSET = 10000


class StackError(RuntimeError):
    """The stack could not be started, stopped or reached; the message says why and what to do."""


def _s(default: Any, help: str, env: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class StackSettings:
    data_dir: Path = _s(Path(".visalign-stack"), "Directory for the servers' data, logs, s3.json and "
                        "the stack.json record (relative paths resolve against the current directory).",
                        env="VISALIGN_STACK_DIR")
    s3_port: int = _s(8333, "S3 port; weed's other ports (master, volume, filer, admin) take the next 8 "
                      "ports and the admin gRPC port is s3_port+8+10000.", env="VISALIGN_S3_PORT")
    mlflow_port: int = _s(5000, "MLflow tracking server port.", env="VISALIGN_MLFLOW_PORT")
    access_key: str = _s("visalign", "S3 access key the stack's identity accepts (local use only).")
    secret_key: str = _s("visalign-local-secret", "S3 secret key (local use only; the stack listens on "
                         "127.0.0.1).")
    bucket: str = _s("visalign", "Bucket created by `up`; MLflow artifacts go under s3://BUCKET/mlflow.")

    def __post_init__(self) -> None:
        # Absolute, because the servers run with the data dir as cwd and the record stores paths.
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        problems = [f"{name}={port}: must be a port in 1..65535"
                    for name, port in self.ports.items() if not 0 < port < 65536]
        if list(self.ports.values()).count(self.mlflow_port) > 1:
            problems.append(f"mlflow_port={self.mlflow_port}: collides with weed's ports {self.ports}; "
                            "pick another")
        if problems:
            raise ConfigError(problems)

    @property
    def weed_ports(self) -> dict[str, int]:
        return {name: self.s3_port + off for name, off in WEED_PORT_OFFSETS.items()}

    @property
    def ports(self) -> dict[str, int]:
        """Every port the stack listens on, by weed's flag name (plus admin gRPC and mlflow)."""
        admin_grpc = self.s3_port + WEED_PORT_OFFSETS["admin.port"] + ADMIN_GRPC_OFFSET
        return {**self.weed_ports, "admin.port.grpc": admin_grpc, "mlflow": self.mlflow_port}

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> StackSettings:
        """Defaults, then VISALIGN_* environment variables, then `overrides` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            env_name = f.metadata.get("env")
            if overrides.get(f.name) is not None:
                values[f.name] = overrides[f.name]
            elif env_name and environ.get(env_name):
                try:
                    values[f.name] = type(f.default)(environ[env_name])
                except ValueError as e:
                    raise ConfigError([f"{env_name}={environ[env_name]!r}: {e}"]) from e
        return cls(**values)


@dataclass(frozen=True)
class StackInfo:
    settings: StackSettings
    pids: dict[str, int]
    env: dict[str, str]
    logs: dict[str, Path]

    @property
    def s3_endpoint(self) -> str:
        return self.settings.s3_endpoint

    @property
    def mlflow_url(self) -> str:
        return self.settings.mlflow_uri


@dataclass(frozen=True)
class ServerStatus:
    name: str
    pid: int | None
    running: bool  # the recorded process exists
    answering: bool  # and it answers (S3: a bucket list with the credentials; MLflow: /health)
    url: str


def env(settings: StackSettings) -> dict[str, str]:
    """The environment a client (store, tracking, a stage) needs to use this stack."""
    return {
        "AWS_ENDPOINT_URL": settings.s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": settings.s3_endpoint,
        "AWS_ACCESS_KEY_ID": settings.access_key,
        "AWS_SECRET_ACCESS_KEY": settings.secret_key,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_TRACKING_URI": settings.mlflow_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


