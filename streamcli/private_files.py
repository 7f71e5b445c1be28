"""Files and directories only their owner may read: the server's data dir and the chat history.

What streamcli keeps (a database of everyone's events and messages, uploaded files, the chat input
history) is nobody else's business on a shared machine: directories are created 0700 and files 0600,
whatever the umask, and ones that exist already are tightened when this user owns them.
"""

from __future__ import annotations

import io
import os
import pathlib

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: pathlib.Path) -> pathlib.Path:
    """Create ``path`` (and its missing parents, with the usual mode) as a directory only its owner may use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.mkdir(mode=DIR_MODE, exist_ok=True)
    _tighten(path, DIR_MODE)
    return path


def private_file(path: pathlib.Path) -> pathlib.Path:
    """Create ``path`` empty if it is missing, readable and writable by its owner only."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE))
    _tighten(path, FILE_MODE)
    return path


def open_private(path: pathlib.Path, mode: str) -> io.FileIO:
    """``io.FileIO(path, mode)``, creating the file 0600 if it does not exist."""
    return io.FileIO(path, mode, opener=_private_opener)


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


def _tighten(path: pathlib.Path, mode: int) -> None:
    status = path.stat()
    if status.st_uid == os.getuid() and status.st_mode & 0o777 != mode:
        path.chmod(mode)
