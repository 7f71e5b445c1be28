"""Ids given by their start, as git takes ``3f2a9c`` for a commit: ``resolve_id``.

Every command that takes a file or batch id passes it through ``resolve_id``
first. A whole id (the 32 hex digits the server gives files and unnamed
batches) goes through untouched, with no call; anything else is resolved by the
server (ResolveIds), which matches it only against the ids the token may list.
"""

from __future__ import annotations

import enum
import re

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, rpc_errors
from streamcli.errors import UsageError

#: A whole id as the server makes them (uuid4 hex; a user's batch is "USER/" and one).
_WHOLE_ID = re.compile(r"[0-9a-f]{32}")
#: Candidates an ambiguous prefix's error names.
CANDIDATES = 5


class IdKind(enum.Enum):
    """What an id names, and how an error calls it."""

    FILE = pb.ID_KIND_FILE
    BATCH = pb.ID_KIND_BATCH

    @property
    def noun(self) -> str:
        return "file" if self is IdKind.FILE else "batch"


def is_whole_id(kind: IdKind, text: str) -> bool:
    """Whether ``text`` has the form of an id the server made itself: it needs no resolving."""
    name = text.rpartition("/")[2] if kind is IdKind.BATCH else text
    return _WHOLE_ID.fullmatch(name) is not None


async def resolve_id(conn: Connection, kind: IdKind, text: str) -> str:
    """The one id of ``kind`` the caller may see that ``text`` is the start of (or is).

    ``text`` itself when it is a whole id, when no id begins with it (the RPC that
    uses it then says NOT_FOUND), or when the server has no ResolveIds (a server
    that takes only whole ids).

    Raises:
        UsageError: several ids begin with ``text``; the message names a few.
        InvalidArgumentError: ``text`` is too short to be a prefix (fewer than 4 characters) and no id.
    """
    if is_whole_id(kind, text):
        return text
    request = pb.ResolveIdsRequest(kind=kind.value, prefix=text, limit=CANDIDATES)
    with rpc_errors(conn):
        try:
            reply = await conn.stub.ResolveIds(request, metadata=conn.metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return text
    # What the server answers is checked, not obeyed: an id that does not begin with the text is no answer.
    matches = [candidate for candidate in reply.ids if _begins(candidate, text)]
    total = max(reply.total, len(matches)) if matches else 0
    if total <= 1:
        return matches[0] if matches else text
    shown = ", ".join(matches[:CANDIDATES])
    more = f" and {total - len(matches[:CANDIDATES])} more" if total > len(matches[:CANDIDATES]) else ""
    raise UsageError(
        f"id prefix '{text}' is ambiguous: {total} {kind.noun} ids begin with it ({shown}{more}); give more characters"
    )


def _begins(candidate: str, text: str) -> bool:
    """Whether ``candidate`` is an id that ``text`` is the start of (a user's batch with or without "USER/")."""
    return candidate.startswith(text) or candidate.partition("/")[2].startswith(text)
