"""Fixtures of the deploy tests; the schemas and stand-ins live in deploy_support.py."""

from __future__ import annotations

import pytest
from deploy_support import TrainJobApiStandIn


@pytest.fixture
def trainjob_api():
    servers = []

    def make(script):
        s = TrainJobApiStandIn(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def kfp_api():
    from deploy_support import KfpApiStandIn

    server = KfpApiStandIn()
    yield server
    server.close()
