"""The range of a ``google.protobuf.Timestamp`` and its RFC 3339 text, shared by the server's checks and the
client's records.

RFC 3339 (and so protobuf's JSON form) writes the years 0001-9999 only; a
Timestamp outside them, or with nanos outside one second, cannot be written.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Protocol

#: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, in seconds since the epoch.
FIRST_SECOND, LAST_SECOND = -62_135_596_800, 253_402_300_799


class TimestampLike(Protocol):
    @property
    def seconds(self) -> int: ...

    @property
    def nanos(self) -> int: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Instant:
    """A time as a Timestamp carries it: seconds since the epoch (UTC) and nanoseconds within that second.

    What a server sent, as it sent it: possibly a time RFC 3339 cannot write (``writable``), which
    ``rfc3339`` and ``invalid_time`` then describe instead of raising.
    """

    seconds: int
    nanos: int


def writable(stamp: TimestampLike) -> bool:
    """Whether ``stamp`` is a time RFC 3339 can write (what protobuf's ``ToJsonString`` accepts)."""
    return FIRST_SECOND <= stamp.seconds <= LAST_SECOND and 0 <= stamp.nanos <= 999_999_999


_second_text: tuple[int, str] = (-1, "")
_EPOCH = datetime.datetime(1970, 1, 1)


def utc_second(seconds: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) of seconds since the epoch, formatted once per second: the
    records of a replay or a live tail come many to a second."""
    global _second_text
    if _second_text[0] != seconds:
        # isoformat, not strftime: %Y does not pad years before 1000 to four digits (glibc).
        _second_text = (seconds, (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat())
    return _second_text[1]


def invalid_time(stamp: TimestampLike) -> str | None:
    """What to show for a time no RFC 3339 text can hold (outside the years 0001-9999, or nanos outside a
    second), or None for a valid one. The server refuses such times; another server may send them."""
    if writable(stamp):
        return None
    return f"invalid time ({stamp.seconds} s, {stamp.nanos} ns)"


def rfc3339(stamp: TimestampLike) -> str:
    """``Timestamp.ToJsonString``'s text (fraction of 0, 3, 6 or 9 digits), several times faster."""
    nanos = stamp.nanos
    if not writable(stamp):
        return invalid_time(stamp) or ""
    text = utc_second(stamp.seconds)
    if not nanos:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"
