"""Shared fixtures: a real local stack (SeaweedFS S3 + MLflow) for the integration tests.

Tests that use `stack` are marked `@pytest.mark.integration`. The stack listens on free ports and
keeps its data under pytest's tmp dir, so it never touches a developer's own stack.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from visalign.infra import stack as stack_mod
from visalign.recipes import ConfigError


def free_stack_settings(data_dir: Path) -> stack_mod.StackSettings:
    """Settings whose every port is free now.

    Ports are drawn below Linux's ephemeral range (32768+), where outgoing connections could
    take them between this check and the servers' start; weed's admin gRPC port is s3+10008.
    """
    rng = random.Random()
    for _ in range(100):
        s3_port = rng.randrange(10000, 22000)
        mlflow_port = rng.randrange(10000, 32000)
        try:
            settings = stack_mod.StackSettings(data_dir=data_dir, s3_port=s3_port, mlflow_port=mlflow_port)
        except ConfigError:  # mlflow_port inside weed's block; draw again
            continue
        if not stack_mod.busy_ports(settings):
            return settings
    raise RuntimeError("no free block of ports found for a test stack")


@pytest.fixture
def stack_settings(tmp_path) -> stack_mod.StackSettings:
    """Fresh settings (free ports, empty data dir) for a test that starts its own stack."""
    return free_stack_settings(tmp_path / "stack")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One running stack for the session, with its client env vars set (and restored after)."""
    settings = free_stack_settings(tmp_path_factory.mktemp("stack"))
    info = stack_mod.up(settings)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in info.env.items():
                mp.setenv(key, value)
            for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # would override the stack's keys
                mp.delenv(key, raising=False)
            # local_path(s3://...) caches under the session's tmp dir, not ~/.cache.
            mp.setenv("VISALIGN_CACHE", str(tmp_path_factory.mktemp("cache")))
            yield info
    finally:
        stack_mod.down(settings)
