"""The rules for file names, shared by the server (names it accepts) and the client (names it receives).

Both sides import this module: it is pure (no grpc, no server code), so the
client can apply to a name a server sends exactly the rules ``streamcli serve``
applies to a name it accepts, whoever the server is.
"""

from __future__ import annotations

import unicodedata

#: Longest file name, in bytes of UTF-8.
MAX_FILENAME_BYTES = 255


def check_filename(name: str) -> str:
    """Return ``name`` if it is acceptable as a file's label, else raise ValueError.

    Names are labels, never paths: the bytes are stored under a server id. Still,
    labels that look like paths or hide characters are refused so that no client
    can be tricked into writing them somewhere when it downloads.
    """
    if not name:
        raise ValueError("the file name is empty")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise ValueError(f"the file name is longer than {MAX_FILENAME_BYTES} bytes")
    if "/" in name or "\\" in name:
        raise ValueError(f"the file name {name!r} contains a path separator; names are labels, not paths")
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a file name")
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise ValueError(f"the file name {name!r} contains a control character")
    return name


def is_filename(name: str) -> bool:
    """Whether ``name`` passes :func:`check_filename`."""
    try:
        check_filename(name)
    except ValueError:
        return False
    return True
