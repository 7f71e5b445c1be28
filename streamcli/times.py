"""The range of a ``google.protobuf.Timestamp``, shared by the server's checks and the client's readers.

RFC 3339 (and so protobuf's JSON form) writes the years 0001-9999 only; a
Timestamp outside them, or with nanos outside one second, cannot be written.
"""

from __future__ import annotations

from typing import Protocol

#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, in seconds since the epoch.
FIRST_SECOND, LAST_SECOND = -62_135_596_800, 253_402_300_799


class TimestampLike(Protocol):
    seconds: int
    nanos: int


def writable(stamp: TimestampLike) -> bool:
    """Whether ``stamp`` is a time RFC 3339 can write (what protobuf's ``ToJsonString`` accepts)."""
    return FIRST_SECOND <= stamp.seconds <= LAST_SECOND and 0 <= stamp.nanos <= 999_999_999
