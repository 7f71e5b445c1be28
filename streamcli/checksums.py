"""SHA-256 helpers shared by the server and the client (files are read in 1 MiB blocks)."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

BLOCK = 1 << 20


def sha256_prefix(handle: BinaryIO, length: int) -> hashlib._Hash:
    """A SHA-256 object fed with the first ``length`` bytes of ``handle``.

    Used to continue hashing a resumed transfer (hash states cannot be saved).
    Leaves the position after what was read.
    """
    hasher = hashlib.sha256()
    handle.seek(0)
    remaining = length
    while remaining and (block := handle.read(min(remaining, BLOCK))):
        hasher.update(block)
        remaining -= len(block)
    return hasher
