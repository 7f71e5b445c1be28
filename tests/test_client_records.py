"""The typed records client/ hands up (events, publish results, notifications, files, transfers): their
``to_json()`` after a round trip through the real server, against dicts written out by hand."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import TypeVar

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.client.events import PublishResult, event_from_json, publish_events, tail_events
from streamcli.client.files import FileEntry, get_file_info, list_files
from streamcli.client.jsontext import ENCODER
from streamcli.client.notifications import Notification, send_notification, tail_notifications
from streamcli.client.progress import NullProgress
from streamcli.client.tail import TailOptions
from streamcli.client.transfer import download_file, upload_path
from streamcli.server.app import RunningServer
from streamcli.times import Instant
from tests.support.servers import client

R = TypeVar("R")
HISTORY = TailOptions(follow=False)


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


async def collect(stream: AsyncIterator[Sequence[R]]) -> list[R]:
    return [record async for batch in stream for record in batch]


async def test_published_events_come_back_as_event_records(conn: Connection) -> None:
    events = [
        {"user_id": "alice", "type": "login", "timestamp": "2026-11-24T10:00:00.123456789Z", "data": {"ip": "1.2.3.4"}},
        {"user_id": 'bob "b"', "type": "USER_EVENT_TYPE_PASSWORD_CHANGE", "timestamp": "2026-11-24T10:00:01Z"},
        {"user_id": "carol", "type": "logout", "timestamp": "2026-11-24T10:00:02.5Z", "data": [1, "two", None]},
    ]
    reply = await publish_events(conn, [event_from_json(e) for e in events])
    history = await collect(tail_events(conn, user_id="", all_users=True, types=[], since=Timestamp(), options=HISTORY))

    assert reply == PublishResult(count=3, first_id=1, last_id=3)
    assert reply.to_json() == {"count": 3, "first_id": 1, "last_id": 3}
    expected = [
        {"id": 1, "user_id": "alice", "type": "login", "timestamp": "2026-11-24T10:00:00.123456789Z",
         "data": {"ip": "1.2.3.4"}},
        {"id": 2, "user_id": 'bob "b"', "type": "password_change", "timestamp": "2026-11-24T10:00:01Z", "data": None},
        {"id": 3, "user_id": "carol", "type": "logout", "timestamp": "2026-11-24T10:00:02.500Z",
         "data": [1, "two", None]},
    ]  # fmt: skip
    assert [event.to_json() for event in history] == expected
    # The --json line is the dict's own encoding, byte for byte (keys in this order, no spaces).
    assert [event.json_line() for event in history] == [ENCODER.encode(record) for record in expected]
    first, second, _ = history
    assert (first.id, first.user_id, first.type) == (1, "alice", "login")
    assert first.timestamp == Instant(1_795_514_400, 123_456_789)
    assert (first.has_data, first.data, first.data_text) == (True, {"ip": "1.2.3.4"}, '{"ip":"1.2.3.4"}')
    assert (second.has_data, second.data, second.data_text) == (False, None, "null")
    again = await collect(tail_events(conn, user_id="", all_users=True, types=[], since=Timestamp(), options=HISTORY))
    assert again == history and first != second  # equal when their messages are


async def test_sent_and_tailed_notifications_are_notification_records(conn: Connection) -> None:
    sent = await send_notification(
        conn, recipient="alice", topic="deploy", title="v2 is live", body="all regions",
        severity=pb.NOTIFICATION_SEVERITY_WARNING, attributes={"version": "2", "by": "ci"},
    )  # fmt: skip
    (tailed,) = await collect(
        tail_notifications(conn, recipient="alice", topics=[], since=Timestamp(), options=HISTORY)
    )
    (raw,) = [n async for r in conn.stub.SubscribeToNotifications(
        pb.SubscribeToNotificationsRequest(recipient="alice", start_time=Timestamp(), no_follow=True)
    ) for n in r.notifications]  # fmt: skip

    assert isinstance(sent, Notification) and tailed == sent
    assert sent.to_json() == {
        "id": 1,
        "recipient": "alice",
        "topic": "deploy",
        "severity": "warning",
        "title": "v2 is live",
        "body": "all regions",
        "timestamp": raw.timestamp.ToJsonString(),  # the server's clock: protobuf's own text of it
        "attributes": {"version": "2", "by": "ci"},
    }
    assert sent.timestamp == Instant(raw.timestamp.seconds, raw.timestamp.nanos)
    with pytest.raises(TypeError):
        sent.attributes["version"] = "3"  # type: ignore[index]  # a record is read-only, its attributes too


async def test_stored_files_are_file_entries_and_transfers_transfer_results(
    conn: Connection, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "report.pdf"
    source.write_bytes(b"%PDF-1.7 hello")
    digest = hashlib.sha256(b"%PDF-1.7 hello").hexdigest()
    uploaded = await upload_path(conn, source, NullProgress(), content_type="application/pdf")
    (listed,) = await list_files(conn, 10)
    raw = (await conn.stub.GetFileInfo(pb.GetFileInfoRequest(file_id=uploaded.file_id))).file

    assert isinstance(listed, FileEntry) and listed == await get_file_info(conn, uploaded.file_id)
    assert listed.to_json() == {
        "id": uploaded.file_id,
        "name": "report.pdf",
        "size": 14,
        "content_type": "application/pdf",
        "sha256": digest,
        "created_at": raw.created_at.ToJsonString(),
    }
    assert uploaded.to_json() == {
        "id": uploaded.file_id, "name": "report.pdf", "size": 14, "sha256": digest, "resumed_from": 0,
        "already_stored": False,
    }  # fmt: skip
    # A download may start from the entry (no second look-up) or from the id: the same result.
    by_entry = await download_file(conn, listed, tmp_path / "a.pdf", NullProgress())
    by_id = await download_file(conn, uploaded.file_id, tmp_path / "b.pdf", NullProgress())
    assert by_entry.to_json() == {
        "id": uploaded.file_id, "name": "report.pdf", "size": 14, "sha256": digest, "resumed_from": 0,
        "path": str(tmp_path / "a.pdf"),
    }  # fmt: skip
    assert by_id.to_json() == by_entry.to_json() | {"path": str(tmp_path / "b.pdf")}
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes() == b"%PDF-1.7 hello"
    assert json.loads(ENCODER.encode(listed.to_json())) == listed.to_json()
