"""Checks of what clients send, shared by the services."""

from __future__ import annotations

import re

from streamcli.backends.blobs import SAFE_ID

#: A user's name (in a chat room, a document, a user token).
USER_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
#: A client's name for itself, echoed in what it stores (chat messages, document edits).
CLIENT_ID = re.compile(r"[A-Za-z0-9_.-]{0,64}")
CLIENT_ID_RULE = "client_id must be at most 64 letters, digits, '-', '_' or '.'"

#: What the listing RPCs hand out as a page token: an offset of at most 18 ASCII digits (str.isdigit() alone
#: also takes "²", which int() refuses, and numbers beyond SQLite's 64-bit integers).
PAGE_TOKEN = re.compile(r"[0-9]{1,18}")


def page_offset(token: str) -> int | None:
    """The offset a listing's page token stands for (0 for none), or None for one this server never gave."""
    if not token:
        return 0
    return int(token) if PAGE_TOKEN.fullmatch(token) else None


# Control characters (Unicode category Cc: C0, DEL and C1). In a name they are never meant; shown by
# a client that does not escape them they act on its terminal (ESC) or break its lines (newline).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # newline and tab allowed


def has_control(text: str, *, multiline: bool = False) -> bool:
    """Whether ``text`` holds a control character; ``multiline`` allows newline and tab."""
    return (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text) is not None


#: Most characters of a client's value quoted in a status detail. The detail travels in a header
#: (grpc-message), and clients refuse headers over 16 KiB: a call quoting a 100 KB id in full would
#: reach its client as RESOURCE_EXHAUSTED "Stream removed", not with the server's status.
MAX_QUOTED = 200


def quoted(value: str) -> str:
    """``repr(value)``, cut after ``MAX_QUOTED`` characters: safe to put in a status detail."""
    if len(value) <= MAX_QUOTED:
        return repr(value)
    return f"{value[:MAX_QUOTED]!r}... ({len(value)} characters)"


class MalformedRequest(Exception):
    """Message ``index`` (from 0) of a request stream is not a valid ``type_name``.

    Raised by the request iterator a streaming handler receives, at the bad message
    (``streamcli.server.decoding``). A handler that stores what it receives catches it
    to say what was stored; otherwise the call ends INVALID_ARGUMENT with ``detail``.
    """

    def __init__(self, index: int, type_name: str, reason: str) -> None:
        self.index = index
        self.type_name = type_name
        self.reason = reason
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        return f"message {self.index} of the request stream is not a valid {self.type_name}: {self.reason}"


def id_problem(field: str, value: str) -> str | None:
    """Why ``value`` cannot be the id a client names in ``field`` (None: it can): ids the client chooses
    (batch and push ids) are names in storage, held to ``backends.blobs.SAFE_ID``."""
    if SAFE_ID.fullmatch(value):
        return None
    return f"{field} {quoted(value)} must be 1-64 characters among ASCII letters, digits, '-' and '_'"
