"""The user tokens of ``serve --user-tokens FILE``: read at start, read again on SIGHUP.

One ``NAME=TOKEN`` per line; blank lines and lines starting with ``#`` are
ignored. A name is what chat and the logs know the user by (1-32 letters,
digits, ``-``, ``_`` or ``.``), a token any text without spaces at its ends.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Mapping

from streamcli.errors import UsageError
from streamcli.services.checks import USER_ID
from streamcli.services.rooms import SYSTEM_USER


def check_user_tokens(users: Mapping[str, str], where: str) -> None:
    """Refuse names that are not user ids and empty tokens.

    Raises:
        UsageError: naming ``where`` the bad entry came from.
    """
    for name, token in users.items():
        if not USER_ID.fullmatch(name) or name == SYSTEM_USER:
            raise UsageError(
                f"{where}: {name!r} is not a user name (1-32 letters, digits, '-', '_' or '.'; not 'system')"
            )
        if not token.strip():
            raise UsageError(f"{where}: the token of {name} is empty")


def read_user_tokens(path: pathlib.Path) -> dict[str, str]:
    """NAME -> TOKEN from ``path``.

    Raises:
        UsageError: the file cannot be read, or a line is not ``NAME=TOKEN``, or a name comes twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--user-tokens {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"--user-tokens {path}: not a regular file")
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, token = line.partition("=")
        where = f"--user-tokens {path}, line {number}"
        if not separator:
            raise UsageError(f"{where}: expected NAME=TOKEN")
        name, token = name.strip(), token.strip()
        if name in users:
            raise UsageError(f"{where}: {name} has a token already")
        check_user_tokens({name: token}, where)
        users[name] = token
    return users


def world_readable(path: pathlib.Path) -> bool:
    """Whether others than the owner and group may read ``path`` (worth a warning: it holds secrets)."""
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False
