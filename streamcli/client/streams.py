"""Pieces of a resumable client stream (batch ingest, metric pushes, events publish): one stream, and what it
has not had acknowledged.

Such a client numbers what it sends (each message says the index of its first
item), ends a stream now and then for the server's acknowledgement (how far it
holds the input: its next index), and re-sends on the next stream what was not
acknowledged; the server takes each index once.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Generic, TypeVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, FirstStatus
from streamcli.protowire import serialize

M = TypeVar("M")
_SERVICE = pb.DESCRIPTOR.services_by_name["StreamingService"].full_name


def bytes_stream(conn: Connection, method: str, response: Any) -> Any:
    """The client-streaming ``method`` of the service on ``conn``'s channel, taking messages or their serialized
    bytes (a client that writes its records as bytes sends them as they are)."""
    return conn.channel.stream_unary(
        f"/{_SERVICE}/{method}", request_serializer=serialize, response_deserializer=response.FromString
    )


def bytes_bidi_stream(conn: Connection, method: str, response: Any) -> Any:
    """The bidirectional ``method`` of the service on ``conn``'s channel, taking messages or their serialized
    bytes, as ``bytes_stream``."""
    return conn.channel.stream_stream(
        f"/{_SERVICE}/{method}", request_serializer=serialize, response_deserializer=response.FromString
    )


class Outstanding(Generic[M]):
    """Messages sent and not yet acknowledged, in index order, each with its first index and item count."""

    def __init__(self) -> None:
        self._items: collections.deque[tuple[int, int, M]] = collections.deque()

    def add(self, first: int, count: int, message: M) -> None:
        self._items.append((first, count, message))

    def acknowledge(self, next_index: int) -> None:
        """Forget the messages whose every item is below ``next_index``."""
        items = self._items
        while items and items[0][0] + items[0][1] <= next_index:
            items.popleft()

    def head(self) -> M | None:
        """The oldest outstanding message, if any."""
        return self._items[0][2] if self._items else None

    def __iter__(self) -> Iterator[M]:
        return (message for _, _, message in list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> int:
        """How many items the outstanding messages hold."""
        return sum(count for _, count, _ in self._items)


async def one_stream(call: Any, write: Callable[[Any, asyncio.Future[Any]], Awaitable[None]]) -> Any:
    """Run ``write(call, outcome)`` on a client-streaming ``call`` and return its response.

    ``outcome`` is the call's response to come (done once the call has ended: a writer waiting for input
    stops then). It says how the call ended when the server ends it during the writes (they then fail);
    the server's own status is kept (``FirstStatus``): a refusal must not reach the caller as grpc.aio's
    INTERNAL stand-in, which would be retried (grpc/grpc#36066).

    Raises:
        grpc.aio.AioRpcError: the call failed.
    """
    first_status = FirstStatus(call)
    outcome = asyncio.ensure_future(call)
    try:
        await write(call, outcome)
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the call has ended: its outcome says how
    except BaseException:  # Ctrl-C, or the source's own failure
        call.cancel()
        raise
    try:
        return await outcome
    except grpc.aio.AioRpcError as exc:
        raise first_status.unmask(exc) from exc
