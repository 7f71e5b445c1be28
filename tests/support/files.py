"""Test files of random content."""

from __future__ import annotations

import hashlib
import os
import pathlib

MiB = 1 << 20


def write_random(path: pathlib.Path, size: int) -> str:
    """Fill ``path`` with ``size`` random bytes; return their SHA-256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            block = os.urandom(min(remaining, 4 * MiB))
            handle.write(block)
            hasher.update(block)
            remaining -= len(block)
    return hasher.hexdigest()
