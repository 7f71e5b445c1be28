"""ResolveIds: the start of an id to the ids that begin with it, among those the caller may see.

As git takes ``3f2a9c`` for a commit, the CLI takes the start of a file or batch
id. The server resolves it, so every client gets the same answer and the access
rules hold: a user token's prefix is matched only against the ids that token
could list (its own files and those posted in rooms it joined; its own
batches), so a prefix never tells that another user's id exists.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.backends.base import MetadataStore
from streamcli.credentials import Caller, Credentials
from streamcli.services.checks import quoted
from streamcli.services.rpc import Context, abort

#: The fewest characters a prefix may have (after any "USER/" of a batch id), unless it is a whole id.
MIN_ID_PREFIX = 4
#: Ids answered when the request sets no limit, and the most it may ask for.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
#: Longer than any id (a file id has at most 64 characters, a batch id a user name, "/" and 64): such a
#: prefix begins no id, and is not sent to the store.
MAX_ID_LENGTH = 512


class IdService:
    """The ResolveIds RPC of ``StreamingService``, on a backend's metadata store."""

    #: The RPCs of the contract this class implements (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("ResolveIds",)

    def __init__(self, metadata: MetadataStore, credentials: Credentials) -> None:
        self._metadata = metadata
        self._credentials = credentials

    async def ResolveIds(self, request: pb.ResolveIdsRequest, context: Context) -> pb.ResolveIdsResponse:
        if request.kind not in (pb.ID_KIND_FILE, pb.ID_KIND_BATCH):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "kind must be ID_KIND_FILE or ID_KIND_BATCH")
        if request.limit > MAX_LIMIT:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"limit must be 0-{MAX_LIMIT}")
        limit = request.limit or DEFAULT_LIMIT
        caller = self._credentials.caller(context.invocation_metadata())
        prefix = _own_batch_prefix(request.prefix, caller) if request.kind == pb.ID_KIND_BATCH else request.prefix
        if prefix is None:  # another user's batch: nothing this token may know of
            return pb.ResolveIdsResponse()
        if len(prefix) > MAX_ID_LENGTH:
            return pb.ResolveIdsResponse()
        ids, total = await self._matches(request.kind, prefix, limit, caller)
        if ids and ids[0] == prefix:  # a whole id is itself, even when longer ids begin with it
            return pb.ResolveIdsResponse(ids=[prefix], total=1)
        if len(prefix.rpartition("/")[2]) < MIN_ID_PREFIX:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"id prefix {quoted(request.prefix)} is too short: give at least {MIN_ID_PREFIX} characters",
            )
        return pb.ResolveIdsResponse(ids=ids, total=total)

    async def _matches(self, kind: int, prefix: str, limit: int, caller: Caller) -> tuple[list[str], int]:
        """The ids of ``kind`` the caller may list that begin with ``prefix`` (the same filters as the lists)."""
        if kind == pb.ID_KIND_FILE:
            return await self._metadata.file_ids_with_prefix(prefix, limit, visible_to=caller.user)
        return await self._metadata.batch_ids_with_prefix(prefix, limit, owner=caller.user)


def _own_batch_prefix(prefix: str, caller: Caller) -> str | None:
    """The prefix of stored batch ids a caller's prefix stands for; None when it names another user's batches.

    A user token's batches are stored as "USER/ID" and named with or without "USER/" (as GetBatch takes
    them); the service token's prefix is compared with the stored ids as they are.
    """
    if caller.user is None:
        return prefix
    owner, slash, _ = prefix.partition("/")
    if not slash:
        return f"{caller.user}/{prefix}"
    return prefix if owner == caller.user else None
