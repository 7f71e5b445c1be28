"""``DirectoryBlobStore``: file bytes under one directory.

Layout under the root::

    files/<file_id>        stored, verified files
    partial/<upload_id>    uploads in progress

Ids are checked against ``SAFE_ID`` before they become path components, so
nothing is ever written outside the root whatever a client sends.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import re
import threading
from collections.abc import Sequence

from streamcli.private_files import private_dir

#: What an id must look like to be used as a file name.
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Files of a group (``commit_many``) synced at once, at most.
_SYNCS_AT_ONCE = 16


def check_id(value: str) -> str:
    """Return ``value`` if it is a safe id, else raise ValueError."""
    if not SAFE_ID.fullmatch(value):
        raise ValueError(f"invalid id {value!r}: use 1-64 letters, digits, '-' or '_'")
    return value


class DirectoryBlobStore:
    """A ``BlobStore`` on a local (or shared) directory."""

    def __init__(self, root: pathlib.Path) -> None:
        self._files = root / "files"
        self._partial = root / "partial"
        for directory in (root, self._files, self._partial):
            private_dir(directory)  # 0700; the files in them are created 0600 (uploads.py), renamed as they are
        self._files_sync = DirectorySync(self._files)

    def partial_path(self, upload_id: str) -> pathlib.Path:
        return self._partial / check_id(upload_id)

    def blob_path(self, file_id: str) -> pathlib.Path:
        return self._files / check_id(file_id)

    def commit(self, upload_id: str, file_id: str, fd: int | None = None) -> pathlib.Path:
        if fd is None:
            with open(self.partial_path(upload_id), "rb") as handle:
                return self.commit_many([(upload_id, file_id, handle.fileno())])[0]
        return self.commit_many([(upload_id, file_id, fd)])[0]

    def commit_many(self, partials: Sequence[tuple[str, str, int]]) -> list[pathlib.Path]:
        # Every file's bytes synced first (several at once: the journal commits syncs that wait together in
        # one transaction), then each renamed, then the directory synced once for all the renames.
        moves = [(self.partial_path(upload_id), self.blob_path(file_id), fd) for upload_id, file_id, fd in partials]
        if len(moves) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(len(moves), _SYNCS_AT_ONCE)) as syncs:
                list(syncs.map(os.fsync, [fd for _, _, fd in moves]))
        else:
            for _, _, fd in moves:
                os.fsync(fd)
        for source, target, _ in moves:
            os.replace(source, target)
        self._files_sync.sync()  # make the renames themselves durable
        return [target for _, target, _ in moves]

    def discard_partial(self, upload_id: str) -> int:
        return _remove(self.partial_path(upload_id))

    def partials_older_than(self, prefix: str, before: float) -> list[str]:
        stale = []
        with os.scandir(self._partial) as entries:
            for entry in entries:
                try:
                    if entry.name.startswith(prefix) and entry.stat(follow_symlinks=False).st_mtime < before:
                        stale.append(entry.name)
                except FileNotFoundError:
                    continue  # committed or removed meanwhile
        return stale

    def delete(self, file_id: str) -> int:
        return _remove(self.blob_path(file_id))

    def usage(self) -> int:
        total = 0
        for directory in (self._files, self._partial):
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue  # removed while we were counting
        return total


class DirectorySync:
    """fsync of a directory for many threads at once: one fsync makes every rename done before it started durable.

    Group commit: a caller whose rename an fsync already covers (one that started after the caller asked)
    returns without one of its own, so that uploads committed together share the directory's fsync.
    """

    def __init__(self, directory: pathlib.Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()  # guards the counters
        self._syncing = threading.Lock()  # one fsync at a time
        self._asked = 0  # requests so far
        self._covered = 0  # requests that a finished fsync started after

    def sync(self) -> None:
        """Return once an fsync of the directory that started after this call has finished."""
        with self._lock:
            self._asked += 1
            ticket = self._asked
        with self._syncing:
            if self._covered >= ticket:
                return
            with self._lock:
                covers = self._asked
            directory = os.open(self._directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._covered = covers


def _remove(path: pathlib.Path) -> int:
    """Remove ``path``; returns the bytes freed (0 when it was not there)."""
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
