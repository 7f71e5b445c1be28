"""A bare Chat stream for tests: what the server sends, exactly."""

from __future__ import annotations

import asyncio

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection

TEXT = pb.CHAT_MESSAGE_TYPE_TEXT


class RawChat:
    """A bare Chat stream, for looking at exactly what the server sends."""

    def __init__(self, conn: Connection, room: str, user: str, **join: object) -> None:
        self.call = conn.stub.Chat(metadata=conn.metadata)
        self.join = pb.ChatJoin(room_id=room, user_id=user, **join)  # type: ignore[arg-type]

    async def open(self) -> RawChat:
        await self.call.write(pb.ChatRequest(join=self.join))
        return self

    async def say(self, content: str, kind: int = TEXT, file_id: str = "") -> None:
        await self.call.write(pb.ChatRequest(send=pb.ChatSend(type=kind, content=content, file_id=file_id)))  # type: ignore[arg-type]

    async def next(self, timeout: float = 5) -> pb.ChatResponse:
        while True:
            response: pb.ChatResponse = await asyncio.wait_for(self.call.read(), timeout)
            if response.messages or response.HasField("presence") or response.HasField("notice"):
                return response

    async def messages_until(self, content: str, timeout: float = 5) -> list[pb.ChatMessage]:
        seen: list[pb.ChatMessage] = []
        while not any(m.content == content for m in seen):
            seen.extend((await self.next(timeout)).messages)
        return seen

    async def close(self) -> None:
        await self.call.done_writing()
        while await self.call.read() is not grpc.aio.EOF:  # (read, not iteration: the two may not be mixed)
            pass
