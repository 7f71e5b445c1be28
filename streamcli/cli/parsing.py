"""Parsers for human-friendly option values: sizes (``10G``), durations (``24h``), times (``--since``), ``--user``."""

from __future__ import annotations

import getpass
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated

import typer

from streamcli.errors import UsageError

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp


def _check_user(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise typer.BadParameter("the name must not be empty")
    return value


#: ``--user`` of the commands that act as a named person (chat, collab).
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        "-u",
        envvar="STREAMCLI_USER",
        show_default=False,
        callback=_check_user,
        help="Your name (letters, digits, - _ .). [default: $USER]",
    ),
]


def user_name(user: str | None, environ: Mapping[str, str]) -> str:
    """The name ``--user`` gave, else ``$USER`` of the command's environment, else the login name."""
    return user or environ.get("USER") or getpass.getuser()


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(text: str) -> int:
    """Bytes from ``123``, ``64K``, ``1.5G``, ``10MiB`` (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a size; use bytes or a K/M/G/T suffix, e.g. 10G")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``500ms``, ``10m``, ``24h``, ``7d``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise typer.BadParameter(f"{text!r} is not a duration; use seconds or a ms/s/m/h/d/w suffix, e.g. 24h")
    return float(match.group(1)) * _DURATION_UNITS[(match.group(2) or "s").lower()]


def parse_retention(text: str) -> tuple[float | None, int | None]:
    """``(max_age_seconds, max_count)`` from ``7d``, ``100000``, ``7d,100000`` or ``none``.

    A bare integer is a count of records; an age needs a unit (s, m, h, d, w).
    """
    if text.strip().lower() in ("none", "off", "0"):
        return None, None
    age: float | None = None
    count: int | None = None
    for part in text.split(","):
        part = part.strip()
        if part.isdigit():
            if count is not None:
                raise typer.BadParameter(f"{text!r} gives two counts")
            count = int(part)
        elif part and part[-1].isalpha():
            if age is not None:
                raise typer.BadParameter(f"{text!r} gives two ages")
            age = parse_duration(part)
        else:
            raise typer.BadParameter(
                f"{part!r}: use an age with a unit (7d), a record count (100000), or both (7d,100000)"
            )
    return age, count


def parse_since(text: str | None) -> Timestamp | None:
    """``--since``: a duration back from now (``10m``; longer ago than 1970 means everything) or a time."""
    return _parse_time(text, "--since", future=False)


def parse_until(text: str | None) -> Timestamp | None:
    """``--until``: a duration back from now (``10m``) or a time, which may be in the future."""
    return _parse_time(text, "--until", future=True)


def _parse_time(text: str | None, option: str, *, future: bool) -> Timestamp | None:
    if text is None:
        return None
    from google.protobuf.timestamp_pb2 import Timestamp

    from streamcli.client.events import TimeOutOfRange, parse_timestamp

    if text.strip()[:1].isdigit() and not any(c in text for c in "-:T"):
        try:
            back = parse_duration(text)
        except typer.BadParameter:
            raise UsageError(
                f"{option} {text.strip()!r} is not a duration or a time: use one unit (90m, 2h, 7d) "
                "or a time like 2026-11-24T10:00:00Z"
            ) from None
        stamp = Timestamp()
        stamp.FromNanoseconds(int(max(0.0, time.time() - back) * 1e9))
        return stamp
    try:
        stamp = parse_timestamp(text)
    except TimeOutOfRange:
        raise UsageError(f"{option} {text.strip()}: the time is out of range") from None
    except UsageError as exc:
        raise UsageError(f"{option} {exc}") from None
    if not future and stamp.seconds > time.time() + 1.0:
        raise UsageError(f"{option} {text.strip()} is in the future")
    return stamp
