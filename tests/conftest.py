from __future__ import annotations

import os
import pathlib
from collections.abc import AsyncIterator, Iterator

import pytest

from streamcli.server.app import RunningServer
from tests.support.redis import RedisServer, redis_server
from tests.support.servers import running_server
from tests.support.stores import BACKENDS, backend_name
from tests.support.terminal import Tmux


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets ``ON_EACH_BACKEND = True`` runs each test that uses ``backend`` (``server`` does)
    once per backend: the same tests, not copies."""
    if "backend" in metafunc.fixturenames and getattr(metafunc.module, "ON_EACH_BACKEND", False):
        metafunc.parametrize("backend", BACKENDS, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``serve --backend`` of the test's server: the embedded store, or in a module ``ON_EACH_BACKEND``
    each backend in turn (Redis: the session's, emptied for the test)."""
    return backend_name(request, getattr(request, "param", "embedded"))


@pytest.fixture
async def server(tmp_path: pathlib.Path, backend: str) -> AsyncIterator[RunningServer]:
    """The real server on an ephemeral loopback port (backend: see ``backend``)."""
    async with running_server(tmp_path / "data", backend=backend) as running:
        yield running


@pytest.fixture(scope="session")
def redis_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real ``redis-server`` for the session (loopback, free port, no persistence), stopped at the end."""
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture
def redis_url(redis_process: RedisServer) -> str:
    """The URL of the session's Redis, emptied for this test (``serve --backend`` takes it)."""
    assert redis_process.command("FLUSHALL").startswith(b"+OK")
    return redis_process.url()


@pytest.fixture(autouse=True)
def _no_streamcli_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs parse their options as a subprocess would with ``clean_env()``: the global
    options' ``STREAMCLI_*`` variables are read by the option parser from this process's environment."""
    for name in [name for name in os.environ if name.startswith("STREAMCLI_")]:
        monkeypatch.delenv(name)


@pytest.fixture
def tmux(tmp_path: pathlib.Path) -> Iterator[Tmux]:
    """A private tmux server for real-terminal tests, killed afterwards."""
    terminals = Tmux(tmp_path)
    try:
        yield terminals
    finally:
        terminals.kill()
