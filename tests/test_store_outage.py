"""A Redis outage: every RPC that needs the store ends UNAVAILABLE saying so, never INTERNAL or UNKNOWN.

The server runs in this loop on a ``redis-server`` of the test's own, which the test stops; each RPC is
then called with a request that gets past its checks to the store (a client-streaming one with its
messages, a bidirectional one with its opening message).
"""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import FirstStatus
from streamcli.errors import ExitStatus
from tests.support.inprocess import acli
from tests.support.redis import redis_server
from tests.support.rpc import METHODS
from tests.support.servers import client, running_server

FILE_ID = "0123456789abcdef0123456789abcdef"
SAMPLE = pb.MetricData(name="latency", value=1.5)
LOGIN = pb.UserEvent(user_id="alice", type=pb.USER_EVENT_TYPE_LOGIN)

#: RPC name -> the requests of a call that reaches the store (one for a unary request).
REQUESTS: dict[str, Callable[[], list[Message]]] = {
    "StreamUserEvents": lambda: [pb.StreamUserEventsRequest(user_id="alice")],
    "DownloadFile": lambda: [pb.DownloadFileRequest(file_id=FILE_ID)],
    "SubscribeToNotifications": lambda: [pb.SubscribeToNotificationsRequest(recipient="alice")],
    "UploadFile": lambda: [
        pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a.txt", total_size=3)),
        pb.UploadFileRequest(chunk=b"abc"),
    ],
    "UploadFiles": lambda: [
        pb.UploadFilesRequest(
            metadata=pb.FileMetadata(filename="a.txt", total_size=3, checksum=hashlib.sha256(b"abc").hexdigest()),
            content=b"abc",
        )
    ],
    "ProcessDataBatch": lambda: [
        pb.ProcessDataBatchRequest(batch_id="b1", records=[pb.DataRecord(key="k", value=1.0)], complete=True)
    ],
    "CollectMetrics": lambda: [pb.CollectMetricsRequest(metrics=[SAMPLE])],
    "PublishEvents": lambda: [pb.PublishEventsRequest(events=[LOGIN])],
    "Chat": lambda: [pb.ChatRequest(join=pb.ChatJoin(room_id="lobby", user_id="alice"))],
    "Collaborate": lambda: [pb.CollaborateRequest(join=pb.CollaborateJoin(document_id="doc", user_id="alice"))],
    "GetUploadStatus": lambda: [pb.GetUploadStatusRequest(upload_id=FILE_ID)],
    "GetFileInfo": lambda: [pb.GetFileInfoRequest(file_id=FILE_ID)],
    "ListFiles": lambda: [pb.ListFilesRequest()],
    "DeleteFile": lambda: [pb.DeleteFileRequest(file_id=FILE_ID)],
    "SendNotification": lambda: [pb.SendNotificationRequest(recipient="alice", topic="t", title="hi")],
    "ListDocuments": lambda: [pb.ListDocumentsRequest()],
    "ListBatches": lambda: [pb.ListBatchesRequest()],
    "GetBatch": lambda: [pb.GetBatchRequest(batch_id="b1")],
    "ReadBatchRecords": lambda: [pb.ReadBatchRecordsRequest(batch_id="b1")],
    "ListMetricSeries": lambda: [pb.ListMetricSeriesRequest()],
    "StreamRoomMessages": lambda: [pb.StreamRoomMessagesRequest(room_id="lobby")],
    "ResolveIds": lambda: [pb.ResolveIdsRequest(kind=pb.ID_KIND_FILE, prefix="0123")],
}
#: RPCs that never touch the store (a room's members are its presence, kept per replica today).
STORELESS = {"ProcessLiveData", "ListRoomMembers"}


def test_every_rpc_that_needs_the_store_is_listed() -> None:
    assert {method.name for method in METHODS} == REQUESTS.keys() | STORELESS


async def _status(stub: Any, name: str, requests: list[Message]) -> tuple[grpc.StatusCode, str]:
    method = next(m for m in METHODS if m.name == name)
    argument: Any = iter(requests) if method.client_streaming else requests[0]
    call = getattr(stub, name)(argument, timeout=30)
    first_status = FirstStatus(call)
    try:
        if method.server_streaming:
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        error = first_status.unmask(exc)
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("name", sorted(REQUESTS))
async def test_each_rpc_answers_unavailable_while_redis_is_away(name: str, tmp_path: pathlib.Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        async with running_server(tmp_path / "data", backend=redis.url()) as server, client(server.address) as conn:
            redis.stop()
            code, details = await _status(conn.stub, name, REQUESTS[name]())
    assert (code, name) == (grpc.StatusCode.UNAVAILABLE, name), details
    assert "the server cannot reach its Redis" in details
    if name == "UploadFiles":  # (it says how many of the stream's files were answered, each stored)
        assert "0 files of this stream were answered" in details


async def test_events_publish_during_an_outage_exits_unavailable_with_one_line(tmp_path: pathlib.Path) -> None:
    with redis_server(tmp_path / "redis") as redis:
        async with running_server(tmp_path / "data", backend=redis.url()) as server:
            redis.stop()
            run = await acli(server.address, "events", "publish", "-u", "alice", "-t", "login", "--retries", "0")
    assert run.code == ExitStatus.UNAVAILABLE, run.err
    assert len(run.error_lines) == 1 and "the server cannot reach its Redis" in run.err
