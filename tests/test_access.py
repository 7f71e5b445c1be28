"""Per-user access over real gRPC: a user token reaches only its user's data; the service token anyone's.

The server runs with a service token and two user tokens. Every RPC that
touches a user's data is called with each kind of credential: what is allowed
works, what is not is PERMISSION_DENIED with a reason, and nothing of the other
user shows up in listings or notifications.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import FirstStatus
from streamcli.errors import ExitStatus
from streamcli.server.app import RunningServer
from tests.support.chat import RawChat
from tests.support.inprocess import acli, cli
from tests.support.servers import client, running_server, serve_process
from tests.support.threaded import threaded_server

TOKENS = {"alice": "alice-token", "bob": "bob-token"}
SERVICE = "service-token"
LOGIN = pb.USER_EVENT_TYPE_LOGIN


#: Every test that uses ``server`` runs on each backend (tests/conftest.py): the access rules are the metadata's.
ON_EACH_BACKEND = True


@pytest.fixture
async def server(tmp_path: pathlib.Path, backend: str) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "data", backend=backend, token=SERVICE, user_tokens=TOKENS) as running:
        yield running


def auth(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


ALICE, BOB, SVC = auth(TOKENS["alice"]), auth(TOKENS["bob"]), auth(SERVICE)


async def denied(call: Any) -> str:
    """The detail of a call that must end PERMISSION_DENIED (as the server said it: grpc/grpc#36066)."""
    first_status = FirstStatus(call)
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        try:
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from exc
    assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED, failure.value.details()
    return failure.value.details() or ""


def events(*users: str) -> list[pb.PublishEventsRequest]:
    return [pb.PublishEventsRequest(events=[pb.UserEvent(user_id=u, type=LOGIN) for u in users])]


async def history(stub: Any, metadata: Any, **request: Any) -> list[pb.UserEvent]:
    call = stub.StreamUserEvents(
        pb.StreamUserEventsRequest(start_time=Timestamp(seconds=1), no_follow=True, **request), metadata=metadata
    )
    return [event async for response in call for event in response.events]


async def test_events_a_user_token_publishes_and_reads_its_own_user_only(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub
        assert (await stub.PublishEvents(iter(events("alice")), metadata=ALICE)).count == 1
        detail = await denied(stub.PublishEvents(iter(events("alice", "bob", "alice")), metadata=ALICE))
        assert detail.startswith("event 1 (message 0): this token is alice's: it publishes alice's events only; ")
        assert "the first event of this stream was stored" in detail
        assert (await stub.PublishEvents(iter(events("bob")), metadata=SVC)).count == 1  # the service: anyone
        assert "not bob's" in await denied(
            stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="bob"), metadata=ALICE)
        )
        assert "all_users needs the service token" in await denied(
            stub.StreamUserEvents(pb.StreamUserEventsRequest(all_users=True), metadata=ALICE)
        )
        assert [e.user_id for e in await history(stub, ALICE, user_id="alice")] == ["alice", "alice"]
        assert [e.user_id for e in await history(stub, BOB, user_id="bob")] == ["bob"]
        assert [e.user_id for e in await history(stub, SVC, all_users=True)] == ["alice", "alice", "bob"]


async def notifications_of(stub: Any, metadata: Any, recipient: str) -> list[pb.Notification]:
    request = pb.SubscribeToNotificationsRequest(recipient=recipient, start_time=Timestamp(seconds=1), no_follow=True)
    call = stub.SubscribeToNotifications(request, metadata=metadata)
    return [n async for response in call for n in response.notifications]


async def test_notifications_a_user_token_reads_and_sends_its_own_only(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub

        def note(recipient: str, title: str) -> pb.SendNotificationRequest:
            return pb.SendNotificationRequest(recipient=recipient, topic="t", title=title)

        await stub.SendNotification(note("alice", "a reminder"), metadata=ALICE)
        await stub.SendNotification(note("bob", "for bob: secret plan"), metadata=SVC)
        await stub.SendNotification(note("*", "for everyone"), metadata=SVC)
        assert "not bob's" in await denied(stub.SendNotification(note("bob", "spoofed"), metadata=ALICE))
        assert "not *'s" in await denied(stub.SendNotification(note("*", "to all"), metadata=ALICE))
        assert "not bob's" in await denied(
            stub.SubscribeToNotifications(pb.SubscribeToNotificationsRequest(recipient="bob"), metadata=ALICE)
        )
        assert [n.title for n in await notifications_of(stub, ALICE, "alice")] == ["a reminder", "for everyone"]
        assert [n.title for n in await notifications_of(stub, BOB, "bob")] == ["for bob: secret plan", "for everyone"]


async def upload(stub: Any, metadata: Any, name: str, data: bytes, upload_id: str = "") -> pb.UploadFileResponse:
    digest = hashlib.sha256(data).hexdigest()
    requests = [
        pb.UploadFileRequest(
            upload_id=upload_id, metadata=pb.FileMetadata(filename=name, total_size=len(data), checksum=digest)
        ),
        pb.UploadFileRequest(chunk=data),
    ]
    response: pb.UploadFileResponse = await stub.UploadFile(iter(requests), metadata=metadata)
    return response


async def listed(stub: Any, metadata: Any) -> list[str]:
    return [f.filename for f in (await stub.ListFiles(pb.ListFilesRequest(), metadata=metadata)).files]


async def test_files_are_their_owners_and_the_service_tokens(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub
        mine = await upload(stub, ALICE, "alice.txt", b"alice's")
        await upload(stub, SVC, "service.txt", b"the service's")
        assert await listed(stub, ALICE) == ["alice.txt"]
        assert await listed(stub, BOB) == []
        assert sorted(await listed(stub, SVC)) == ["alice.txt", "service.txt"]
        file_id = mine.file_id
        for call in (
            stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=BOB),
            stub.DownloadFile(pb.DownloadFileRequest(file_id=file_id), metadata=BOB),
        ):
            assert "is not yours, nor posted in a chat room you have joined" in await denied(call)
        assert "only its owner may delete it" in await denied(
            stub.DeleteFile(pb.DeleteFileRequest(file_id=file_id), metadata=BOB)
        )
        info = await stub.GetFileInfo(pb.GetFileInfoRequest(file_id=file_id), metadata=ALICE)
        assert info.file.filename == "alice.txt"
        data = b"".join(
            [r.data async for r in stub.DownloadFile(pb.DownloadFileRequest(file_id=file_id), metadata=SVC)]
        )
        assert data == b"alice's"
        # The upload's notification went to its owner only (it used to go to everyone, with the file id).
        alice_sees = [n.attributes.get("file_id") for n in await notifications_of(stub, ALICE, "alice")]
        assert alice_sees == [file_id]
        assert await notifications_of(stub, BOB, "bob") == []
        assert (await stub.DeleteFile(pb.DeleteFileRequest(file_id=file_id), metadata=ALICE)).bytes_freed == 7


async def test_an_upload_is_resumed_only_with_the_token_that_started_it(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub
        first = pb.UploadFileRequest(upload_id="u-alice", metadata=pb.FileMetadata(filename="big", total_size=10))
        with pytest.raises(grpc.aio.AioRpcError):  # ends incomplete: resumable
            await stub.UploadFile(iter([first, pb.UploadFileRequest(chunk=b"12345")]), metadata=ALICE)
        status = await stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="u-alice"), metadata=ALICE)
        assert status.committed_offset == 5
        assert "started with another token" in await denied(
            stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="u-alice"), metadata=BOB)
        )
        resume = pb.UploadFileRequest(resume=pb.UploadResume(upload_id="u-alice", offset=5))
        assert "started with another token" in await denied(
            stub.UploadFile(iter([resume, pb.UploadFileRequest(chunk=b"67890")]), metadata=BOB)
        )


async def test_a_tokens_file_is_read_again_when_asked(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# users\ncarol = carol-1\n\ndave=dave-1\n")
    async with running_server(tmp_path / "data", user_tokens_file=tokens) as server, client(server.address) as conn:
        stub = conn.stub
        request = pb.SendNotificationRequest(recipient="carol", topic="t", title="hi")
        await stub.SendNotification(request, metadata=auth("carol-1"))
        tokens.write_text("carol=carol-2\n")
        server.reload_user_tokens()
        with pytest.raises(grpc.aio.AioRpcError) as old:
            await stub.SendNotification(request, metadata=auth("carol-1"))
        assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await stub.SendNotification(request, metadata=auth("carol-2"))
        tokens.write_text("carol=carol-3\nnot a token line\n")
        server.reload_user_tokens()  # refused: the tokens in force stay
        await stub.SendNotification(request, metadata=auth("carol-2"))
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.SendNotification(request, metadata=auth("dave-1"))
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_serve_reads_its_tokens_file_again_on_sighup(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("erin=erin-1\n")

    async def send(address: str, token: str) -> grpc.StatusCode:
        async with client(address, token=token) as conn:
            request = pb.SendNotificationRequest(recipient="erin", topic="t", title="hi")
            try:
                await conn.stub.SendNotification(request, metadata=conn.metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    with serve_process(tmp_path, "--user-tokens", str(tokens)) as served:
        before = asyncio.run(send(served.address, "erin-2"))
        tokens.write_text("erin=erin-2\n")
        served.process.send_signal(signal.SIGHUP)
        for _ in range(100):  # the reload is logged once done
            if "SIGHUP: 1 user tokens" in served.log():
                break
            asyncio.run(asyncio.sleep(0.05))
        after = asyncio.run(send(served.address, "erin-2"))
    assert (before, after) == (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OK)


async def test_chat_names_with_a_user_token_are_their_holders_alone(server: RunningServer) -> None:
    async with client(server.address, token=SERVICE) as conn:
        impostor = await RawChat(conn, "r", "alice").open()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await impostor.next()
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert failure.value.details() == "the name alice is a user's who has a token: only its holder may chat as them"
        carol = await RawChat(conn, "r", "carol").open()  # a name without a token: the service may use it
        assert [m.content for m in await carol.messages_until("carol joined")][-1] == "carol joined"
        await carol.close()


async def resolved(stub: Any, metadata: Any, kind: int, prefix: str) -> list[str]:
    reply = await stub.ResolveIds(pb.ResolveIdsRequest(kind=kind, prefix=prefix), metadata=metadata)
    return list(reply.ids)


async def test_a_prefix_resolves_only_to_ids_the_token_may_list(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub
        alices = await upload(stub, ALICE, "alice.txt", b"alice's own")
        prefix = alices.file_id[:8]
        assert await resolved(stub, ALICE, pb.ID_KIND_FILE, prefix) == [alices.file_id]
        assert await resolved(stub, SVC, pb.ID_KIND_FILE, prefix) == [alices.file_id]
        # Neither a prefix nor the whole id tells bob that alice's file exists.
        assert await resolved(stub, BOB, pb.ID_KIND_FILE, prefix) == []
        assert await resolved(stub, BOB, pb.ID_KIND_FILE, alices.file_id) == []
        run = await acli(server.address, "--token", TOKENS["bob"], "files", "info", prefix)
        assert (run.code, run.error_lines) == (ExitStatus.NOT_FOUND, [f"streamcli: error: no file '{prefix}'"])
        batch = pb.ProcessDataBatchRequest(batch_id="reports-1", records=[pb.DataRecord(key="k", value=1)])
        assert (await stub.ProcessDataBatch(iter([batch]), metadata=ALICE)).batch_id == "alice/reports-1"
        assert await resolved(stub, ALICE, pb.ID_KIND_BATCH, "repo") == ["alice/reports-1"]
        assert await resolved(stub, ALICE, pb.ID_KIND_BATCH, "alice/repo") == ["alice/reports-1"]
        assert await resolved(stub, SVC, pb.ID_KIND_BATCH, "alice/repo") == ["alice/reports-1"]
        for prefix in ("repo", "alice/repo", "alice/reports-1"):
            assert await resolved(stub, BOB, pb.ID_KIND_BATCH, prefix) == []


async def test_a_file_posted_in_a_room_becomes_visible_to_its_members(server: RunningServer) -> None:
    async with (
        client(server.address, token=TOKENS["alice"]) as as_alice,
        client(server.address, token=TOKENS["bob"]) as as_bob,
    ):
        shared = await upload(as_alice.stub, ALICE, "shared.txt", b"for the room")
        private = await upload(as_alice.stub, ALICE, "private.txt", b"for alice")
        info = pb.GetFileInfoRequest(file_id=shared.file_id)
        await denied(as_bob.stub.GetFileInfo(info, metadata=BOB))
        alice = await RawChat(as_alice, "team", "alice").open()
        await alice.say("the plan", pb.CHAT_MESSAGE_TYPE_FILE, file_id=shared.file_id)
        await alice.messages_until("the plan")
        await denied(as_bob.stub.GetFileInfo(info, metadata=BOB))  # not a member of the room yet
        bob = await RawChat(as_bob, "team", "bob").open()
        await bob.messages_until("bob joined")
        assert (await as_bob.stub.GetFileInfo(info, metadata=BOB)).file.filename == "shared.txt"
        assert await listed(as_bob.stub, BOB) == ["shared.txt"]
        assert await resolved(as_bob.stub, BOB, pb.ID_KIND_FILE, shared.file_id[:8]) == [shared.file_id]
        assert await resolved(as_bob.stub, BOB, pb.ID_KIND_FILE, private.file_id[:8]) == []
        await denied(as_bob.stub.DeleteFile(pb.DeleteFileRequest(file_id=shared.file_id), metadata=BOB))
        # Bob cannot pass alice's other file on: he cannot see it.
        await bob.say("look", pb.CHAT_MESSAGE_TYPE_FILE, file_id=private.file_id)
        notice = (await bob.next()).notice
        while not notice.code:
            notice = (await bob.next()).notice
        assert (notice.code, notice.message) == (
            "PERMISSION_DENIED",
            f"file {private.file_id} is not yours, nor posted in a room you have joined",
        )
        await bob.close()
        await alice.close()


async def test_a_live_tail_of_one_user_carries_nothing_of_another(tmp_path: pathlib.Path) -> None:
    async with (
        running_server(tmp_path / "data", token=SERVICE, user_tokens=TOKENS, heartbeat=0.1) as server,
        client(server.address) as conn,
    ):
        stub = conn.stub
        tail = stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="alice"), metadata=ALICE)
        await tail.read()  # the first (empty) response: the tail is live
        await stub.PublishEvents(iter(events("bob", "bob", "alice", "bob")), metadata=SVC)
        seen: list[pb.StreamUserEventsResponse] = []
        while sum(len(r.events) for r in seen) < 1 or len(seen) < 3:  # alice's event, and heartbeats
            seen.append(await asyncio.wait_for(tail.read(), 5))
        tail.cancel()
    assert [e.user_id for r in seen for e in r.events] == ["alice"]
    assert all(not r.events or r.events[0].id == 3 for r in seen)


def test_the_cli_says_a_denial_in_one_line_with_exit_6(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data", token=SERVICE, user_tokens=TOKENS) as address:
        result = cli(address, "--token", TOKENS["alice"], "tail", "events", "--all-users", "--since", "1h")
    assert result.code == ExitStatus.AUTH
    assert result.err == ("streamcli: error: all_users needs the service token: a user token reads its own events\n")


async def test_room_members_are_listed_for_either_kind_of_token(server: RunningServer) -> None:
    # Rooms are open (anyone may join one and ask who is there): both kinds of token may list them.
    async with client(server.address, token=TOKENS["alice"]) as as_alice:
        alice = await RawChat(as_alice, "open", "alice").open()
        await alice.messages_until("alice joined")
        request = pb.ListRoomMembersRequest(room_id="open")
        for metadata in (BOB, SVC):
            members = await as_alice.stub.ListRoomMembers(request, metadata=metadata)
            assert list(members.presence.users) == ["alice"]
        await alice.close()


async def test_open_streams_of_a_withdrawn_token_end_at_once(tmp_path: pathlib.Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice=alice-1\nbob=bob-1\n")
    async with (
        running_server(tmp_path / "data", token=SERVICE, user_tokens_file=tokens) as server,
        client(server.address) as conn,
    ):
        stub, alice = conn.stub, auth("alice-1")
        tail = stub.SubscribeToNotifications(pb.SubscribeToNotificationsRequest(recipient="alice"), metadata=alice)
        await tail.read()  # live
        chat = stub.Chat(metadata=alice)
        await chat.write(pb.ChatRequest(join=pb.ChatJoin(room_id="r", user_id="alice")))
        while not (await chat.read()).caught_up:
            pass
        tokens.write_text("bob=bob-1\n")  # alice's token is withdrawn
        server.reload_user_tokens()
        await stub.SendNotification(
            pb.SendNotificationRequest(recipient="alice", topic="t", title="after"), metadata=SVC
        )
        async with client(server.address, token="bob-1") as as_bob:
            bob = await RawChat(as_bob, "r", "bob").open()
            await bob.say("after")
            for call in (tail, chat):
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    while True:
                        response = await asyncio.wait_for(call.read(), 10)
                        assert response is not grpc.aio.EOF
                        texts = [n.title for n in getattr(response, "notifications", [])]
                        texts += [m.content for m in getattr(response, "messages", [])]
                        assert "after" not in texts  # nothing more reaches a withdrawn token
                assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert ended.value.details() == "this stream's token was withdrawn (the server read its tokens again)"
            await bob.close()


async def test_producer_ids_of_a_user_token_are_its_own(server: RunningServer) -> None:
    async with client(server.address) as conn:
        stub = conn.stub

        def batch(user: str, first: int, count: int) -> pb.PublishEventsRequest:
            return pb.PublishEventsRequest(
                producer_id="billing", first_sequence=first,
                events=[pb.UserEvent(user_id=user, type=LOGIN) for _ in range(count)],
            )  # fmt: skip

        assert (await stub.PublishEvents(iter([batch("bob", 1, 2)]), metadata=BOB)).last_sequence == 2
        asked = await stub.PublishEvents(iter([pb.PublishEventsRequest(producer_id="billing")]), metadata=ALICE)
        assert (asked.last_sequence, asked.producer_last_id) == (0, 0)  # nothing of bob's producer
        assert (await stub.PublishEvents(iter([batch("alice", 1, 3)]), metadata=ALICE)).last_sequence == 3
        third = await stub.PublishEvents(iter([batch("bob", 3, 1)]), metadata=BOB)
        assert (third.count, third.duplicates, third.last_sequence) == (1, 0, 3)  # stored, not taken for alice's


async def test_names_differing_in_case_from_a_token_holders_are_refused_and_long_ids_too(
    server: RunningServer,
) -> None:
    async with client(server.address, token=SERVICE) as conn:
        impostor = await RawChat(conn, "r", "Alice").open()
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await impostor.next()
        assert failure.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for call in (
            conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="u" * 300), metadata=SVC),
            conn.stub.SubscribeToNotifications(pb.SubscribeToNotificationsRequest(recipient="u" * 300), metadata=SVC),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as long:
                await call.read()
            assert long.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_an_upload_id_is_the_tokens_own(tmp_path: pathlib.Path) -> None:
    from streamcli.client.transfer import upload_id_for

    path = tmp_path / "f"
    ids = {upload_id_for(path, 1, 2, "f", token) for token in (None, "alice-token", "bob-token")}
    assert len(ids) == 3  # alice's interrupted upload neither blocks nor is resumed by another token


def test_a_name_given_two_user_tokens_is_refused(tmp_path: pathlib.Path) -> None:
    result = cli("127.0.0.1:1", "serve", "--data-dir", str(tmp_path), "--user-token", "a=x", "--user-token", "a=y")
    assert (result.code, result.err) == (2, "streamcli: error: --user-token a=...: a has a token already\n")
