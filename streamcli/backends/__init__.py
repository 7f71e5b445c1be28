"""Storage backends behind the seams of ``streamcli.backends.base``.

``open_backend`` is the only constructor the server uses. Available backends:

* ``embedded`` (default): SQLite in WAL mode plus a directory, both under the
  data dir. Needs no setup; one server process per data dir.
* ``redis://HOST:PORT/DB``: logs and metadata in that Redis database, file bytes
  under the data dir, which replicas on the same Redis share
  (``backends/redis_backend.py``).
"""

from __future__ import annotations

import pathlib
import sqlite3

from streamcli.backends.base import Backend
from streamcli.errors import UsageError

#: Names accepted by ``streamcli serve --backend``.
BACKENDS = ("embedded", "redis://HOST:PORT/DB")


def open_backend(name: str, data_dir: pathlib.Path, *, sync_every_commit: bool = False) -> Backend:
    """Open the named backend, creating its files under ``data_dir`` if needed.

    ``sync_every_commit``: the embedded store syncs its log to the disk at every commit, so that what it
    acknowledged survives power loss too (not only a crash of the process); see ``serve --sync-every-commit``.

    Raises:
        UsageError: the name is unknown or the data dir cannot be used.
    """
    if name.startswith("redis:"):
        from streamcli.backends.redis_backend import open_redis

        return open_redis(name, data_dir)
    if name != "embedded":
        raise UsageError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
    from streamcli.backends.blobs import DirectoryBlobStore
    from streamcli.backends.sqlite import DatabaseInUseError, SqliteStore
    from streamcli.private_files import private_dir

    try:
        private_dir(data_dir)  # 0700: everyone's events, messages and files are in it
        blobs = DirectoryBlobStore(data_dir / "blobs")  # first: it holds nothing open on failure
        store = SqliteStore(data_dir / "streamcli.db", sync_every_commit=sync_every_commit)
    except DatabaseInUseError:
        raise UsageError(f"data dir {data_dir} is in use by another streamcli serve") from None
    except OSError as exc:
        raise UsageError(f"cannot use data dir {data_dir}: {exc.strerror or exc}") from exc
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open the database in {data_dir}: {exc}") from exc
    return Backend(name=name, log=store, metadata=store, blobs=blobs, closer=store, metrics=store)
