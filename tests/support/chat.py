"""Chat for tests: a bare Chat stream (what the server sends, exactly), and what a ChatSession reports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.chat_session import ChatEvent
from streamcli.client.connection import Connection

TEXT = pb.CHAT_MESSAGE_TYPE_TEXT
E = TypeVar("E")


class RawChat:
    """A bare Chat stream, for looking at exactly what the server sends."""

    def __init__(self, conn: Connection, room: str, user: str, **join: object) -> None:
        self.call = conn.stub.Chat(metadata=conn.metadata)
        self.join = pb.ChatJoin(room_id=room, user_id=user, **join)  # type: ignore[arg-type]
        self._held: list[pb.ChatMessage] = []  # read with a message ``messages_until`` waited for, not returned yet

    async def open(self) -> RawChat:
        await self.call.write(pb.ChatRequest(join=self.join))
        return self

    async def say(self, content: str, kind: int = TEXT, file_id: str = "") -> None:
        await self.call.write(pb.ChatRequest(send=pb.ChatSend(type=kind, content=content, file_id=file_id)))  # type: ignore[arg-type]

    async def next(self, timeout: float = 5) -> pb.ChatResponse:
        if self._held:
            held, self._held = self._held, []
            return pb.ChatResponse(messages=held)
        while True:
            response: pb.ChatResponse = await asyncio.wait_for(self.call.read(), timeout)
            if response.messages or response.HasField("presence") or response.HasField("notice"):
                return response

    async def messages_until(self, content: str, timeout: float = 5) -> list[pb.ChatMessage]:
        """The messages up to and including the first with ``content``; any the server sent with it come next."""
        seen: list[pb.ChatMessage] = []
        while not any(m.content == content for m in seen):
            seen.extend((await self.next(timeout)).messages)
        end = next(i for i, m in enumerate(seen) if m.content == content) + 1
        self._held = seen[end:]
        return seen[:end]

    async def close(self) -> None:
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:  # (read, not iteration: the two may not be mixed)
            pass


class SessionEvents:
    """What a ChatSession reports, kept in order, for a test to wait on (pass it as ``report``)."""

    def __init__(self) -> None:
        self.events: list[ChatEvent] = []
        self._cursor = 0  # events before it were looked at by an earlier ``next``
        self._arrived = asyncio.Event()

    def __call__(self, event: ChatEvent) -> None:
        self.events.append(event)
        self._arrived.set()

    async def next(self, kind: type[E], where: Callable[[E], bool] = lambda event: True, timeout: float = 10) -> E:
        """The first event of ``kind`` after the one the previous call returned that satisfies ``where``."""

        async def find() -> E:
            while True:
                for index in range(self._cursor, len(self.events)):
                    event = self.events[index]
                    if isinstance(event, kind) and where(event):
                        self._cursor = index + 1
                        return event
                self._arrived.clear()
                await self._arrived.wait()

        return await asyncio.wait_for(find(), timeout)
