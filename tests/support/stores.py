"""Every storage backend, opened afresh for a test: the contract tests run the same tests on each."""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamcli.backends import open_backend
from streamcli.backends.base import Backend

#: The backends the contract tests run on (``backend_name`` turns one into ``serve --backend``).
BACKENDS = ("embedded", "redis")


def backend_name(request: pytest.FixtureRequest, which: str) -> str:
    """``serve --backend`` for ``which``: the embedded store, or the session's Redis (emptied for the test)."""
    if which == "redis":
        return str(request.getfixturevalue("redis_url"))
    return which


class Store:
    """A backend's log and metadata as one object (as the embedded store is): each method from the store
    that has it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.log = backend.log
        self.metadata = backend.metadata

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log if hasattr(self.log, name) else self.metadata, name)


@contextlib.asynccontextmanager
async def open_store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Store]:
    """The backend named by ``request.param``, empty, closed at the end."""
    backend = open_backend(backend_name(request, request.param), tmp_path / "data")
    try:
        if backend.ready is not None:
            await backend.ready()
        yield Store(backend)
    finally:
        await backend.close()
