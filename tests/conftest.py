from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator

import pytest

from streamcli.server.app import RunningServer
from tests.support.servers import running_server


@pytest.fixture
async def server(tmp_path: pathlib.Path) -> AsyncIterator[RunningServer]:
    """The real server, embedded backend, on an ephemeral loopback port."""
    async with running_server(tmp_path / "data") as running:
        yield running
