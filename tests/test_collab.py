"""Collaborate against the real server: join, concurrent edits transformed and broadcast, a split edit,
rejoin by revision, re-sent changes, trimmed history, in-band refusals, cursors, persistence.

Expected texts are worked out by hand in the comments beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import grpc
import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection
from streamcli.server.app import RunningServer
from streamcli.services.documents import DocumentSettings
from tests.support.servers import client, running_server

#: The tests that use ``server`` run on every backend (tests/conftest.py).
ON_EACH_BACKEND = True

Call = grpc.aio.StreamStreamCall[pb.CollaborateRequest, pb.CollaborateResponse]


class Stream:
    """One Collaborate stream: write requests, read events one at a time (heartbeats skipped; presence events
    kept aside in ``presence``, in order, unless ``with_presence``)."""

    def __init__(self, call: Call, with_presence: bool) -> None:
        self.call = call
        self.with_presence = with_presence
        self.pending: list[pb.CollaborationEvent] = []
        self.presence: list[tuple[str, str, bool]] = []  # (user, client id, present)

    async def event(self) -> pb.CollaborationEvent:
        while True:
            while not self.pending:
                response = await asyncio.wait_for(self.call.read(), 10)
                assert response is not grpc.aio.EOF, "the stream ended"
                self.pending.extend(response.events)
            event = self.pending.pop(0)
            if self.with_presence or event.WhichOneof("change") != "presence":
                return event
            self.presence.append((event.user_id, event.client_id, event.presence.present))

    async def events(self, count: int) -> list[pb.CollaborationEvent]:
        return [await self.event() for _ in range(count)]

    async def edit(self, base: int, position: int, delete: int = 0, text: str = "", seq: int = 0) -> None:
        edit = pb.TextEdit(position=position, delete_count=delete, insert_text=text)
        await self.call.write(
            pb.CollaborateRequest(edit=pb.CollaborateEdit(base_revision=base, edit=edit, client_seq=seq))
        )


@contextlib.asynccontextmanager
async def joined(
    conn: Connection, document: str, user: str, client_id: str = "", with_presence: bool = False, **join: int
) -> AsyncIterator[Stream]:
    call: Call = conn.stub.Collaborate(metadata=conn.metadata)
    await call.write(
        pb.CollaborateRequest(
            join=pb.CollaborateJoin(document_id=document, user_id=user, client_id=client_id or user, **join)
        )
    )
    try:
        yield Stream(call, with_presence)
    finally:
        call.cancel()


def text_of(event: pb.CollaborationEvent) -> tuple[int, str]:
    assert event.WhichOneof("change") == "snapshot", event
    return event.revision, event.snapshot


@pytest.fixture
async def conn(server: RunningServer) -> AsyncIterator[Connection]:
    async with client(server.address) as connection:
        yield connection


def presence_of(event: pb.CollaborationEvent) -> tuple[str, str, bool]:
    assert event.WhichOneof("change") == "presence", event
    return event.user_id, event.client_id, event.presence.present


async def test_editors_are_told_who_is_here_who_comes_and_who_leaves(conn: Connection) -> None:
    async with joined(conn, "p", "alice", "a1", with_presence=True) as alice:
        assert text_of(await alice.event()) == (0, "")
        async with joined(conn, "p", "bob", "b1", with_presence=True) as bob:
            assert text_of(await bob.event()) == (0, "")
            assert presence_of(await bob.event()) == ("alice", "a1", True)  # who is here
            assert presence_of(await alice.event()) == ("bob", "b1", True)  # who came
            # bob's client rejoins on a second stream before its first one has ended: nobody is told it left.
            async with joined(conn, "p", "bob", "b1", with_presence=True, last_revision=0) as again:
                assert {presence_of(await again.event()) for _ in range(2)} == {
                    ("alice", "a1", True),
                    ("bob", "b1", True),
                }
                assert presence_of(await alice.event()) == ("bob", "b1", True)
                bob.call.cancel()
                await asyncio.sleep(0.3)  # (the server notices the cancel; if not yet, the check below is weaker)
                await alice.edit(0, 0, text="x", seq=1)  # an edit: what alice is sent next comes after it
                assert (await alice.event()).WhichOneof("change") == "edit"
                assert (await again.event()).WhichOneof("change") == "edit"
            assert presence_of(await alice.event()) == ("bob", "b1", False)  # its last stream ended: who left


async def test_a_cursor_moved_while_a_change_was_unacknowledged_is_sent_once_it_is(conn: Connection) -> None:
    from streamcli.client.collab import DocumentSession, SessionHandlers
    from streamcli.client.retry import RetryPolicy
    from streamcli.ot import Edit, Operation

    async with joined(conn, "cur", "bob", "b") as bob:
        await bob.event()
        handlers = SessionHandlers(cursor_at=lambda: 3)  # where the view's cursor is once the change is in

        async def work(session: DocumentSession) -> list[pb.CollaborationEvent]:
            await session.joined.wait()
            await session.local(Operation.from_edit(0, Edit(0, 0, "hello")))
            await session.move_cursor(5)  # while "hello" is unacknowledged: not sent now
            return await bob.events(2)

        session = DocumentSession(conn, "cur", "alice", retry=RetryPolicy(retries=0), handlers=handlers)
        edit, cursor = await session.run(work)
        assert (edit.edit.insert_text, cursor.WhichOneof("change")) == ("hello", "cursor")
        assert (cursor.cursor.position, cursor.revision, cursor.client_id) == (3, 1, session.replica.client_id)


async def test_a_join_gets_a_snapshot_and_every_editor_gets_each_edit_with_its_author(conn: Connection) -> None:
    async with joined(conn, "doc", "alice") as alice, joined(conn, "doc", "bob") as bob:
        assert text_of(await alice.event()) == (0, "")
        assert text_of(await bob.event()) == (0, "")
        await alice.edit(0, 0, text="héllo 😀 字", seq=1)
        for stream in (alice, bob):
            event = await stream.event()
            assert (event.revision, event.user_id, event.client_id, event.client_seq, event.parts_after) == (
                1, "alice", "alice", 1, 0,
            )  # fmt: skip
            assert event.edit.insert_text == "héllo 😀 字"
    async with joined(conn, "doc", "carol") as carol:
        assert text_of(await carol.event()) == (1, "héllo 😀 字")


async def test_concurrent_edits_are_transformed_in_code_points(conn: Connection) -> None:
    async with joined(conn, "d2", "alice") as alice, joined(conn, "d2", "bob") as bob:
        await alice.events(1)
        await bob.events(1)
        await alice.edit(0, 0, text="😀字e\u0301!", seq=1)  # 5 code points
        await alice.events(1)
        await bob.events(1)
        # Both based on revision 1: alice deletes "字" (position 1), bob inserts "X" after the accent (4).
        await alice.edit(1, 1, 1, seq=2)
        await alice.events(1)
        await bob.edit(1, 4, text="X", seq=1)
        events = await bob.events(2)  # alice's (revision 2), then bob's own, moved left by one
        assert [(e.revision, e.client_id, e.edit.position) for e in events] == [(2, "alice", 1), (3, "bob", 3)]
        third = await alice.event()
        assert (third.revision, third.edit.position, third.edit.insert_text) == (3, 3, "X")
    async with joined(conn, "d2", "carol") as carol:
        assert text_of(await carol.event()) == (3, "😀e\u0301X!")


async def test_a_deletion_around_a_concurrent_insertion_is_committed_as_two_consecutive_revisions(
    conn: Connection,
) -> None:
    async with joined(conn, "split", "alice") as alice, joined(conn, "split", "bob") as bob:
        await bob.events(1)
        await alice.events(1)
        await alice.edit(0, 0, text="abcdef", seq=1)
        await alice.events(1)
        await bob.events(1)
        await bob.edit(1, 3, text="XY", seq=1)  # abcXYdef, revision 2
        await alice.events(1)  # committed before alice's edit below, which has not seen it
        await alice.edit(1, 1, 4, seq=2)  # on revision 1: remove "bcde"; "XY" stays between its halves
        events = await bob.events(3)
        assert [(e.revision, e.client_id, e.parts_after) for e in events] == [
            (2, "bob", 0),
            (3, "alice", 1),
            (4, "alice", 0),
        ]
        assert [(e.edit.position, e.edit.delete_count) for e in events[1:]] == [(5, 2), (1, 2)]  # "de", then "bc"
    async with joined(conn, "split", "carol") as carol:
        assert text_of(await carol.event()) == (4, "aXYf")


async def test_a_rejoin_by_revision_replays_the_edits_since_and_a_resent_change_is_not_applied_twice(
    conn: Connection,
) -> None:
    async with joined(conn, "re", "alice", "term1") as alice:
        await alice.events(1)
        for n, word in enumerate(["one ", "two ", "three "]):
            await alice.edit(n, n * 4, text=word, seq=n + 1)
            await alice.events(1)
    # The same user in a second terminal, and the first terminal back, re-sending its change 3.
    async with joined(conn, "re", "alice", "term1", last_revision=1) as again:
        replay = await again.events(2)
        assert [(e.revision, e.WhichOneof("change")) for e in replay] == [(2, "edit"), (3, "edit")]
        await again.edit(2, 8, text="three ", seq=3)  # already committed as revision 3
        await again.edit(3, 0, text=">", seq=4)
        fourth = await again.event()
        assert (fourth.revision, fourth.client_seq) == (4, 4)
    async with joined(conn, "re", "bob") as bob:
        assert text_of(await bob.event()) == (4, ">one two three ")


async def test_refusals_are_in_band_and_the_stream_goes_on(tmp_path: pathlib.Path) -> None:
    documents = DocumentSettings(max_length=5)
    async with (
        running_server(tmp_path / "data", documents=documents) as server,
        client(server.address) as conn,
        joined(conn, "bad", "alice") as alice,
    ):
        await alice.events(1)
        await alice.edit(0, 1, text="x", seq=1)  # outside an empty document
        await alice.edit(7, 0, text="x", seq=2)  # a future revision
        await alice.edit(0, 0, text="123456", seq=3)  # over 5 code points
        await alice.edit(0, 0, text="\x1b[2J", seq=4)  # control characters
        await alice.edit(0, 0, text="ok", seq=5)
        events = await alice.events(5)
        assert [(e.WhichOneof("change"), e.refusal.client_seq, e.refusal.code) for e in events[:4]] == [
            ("refusal", n, "INVALID_ARGUMENT") for n in (1, 2, 3, 4)
        ]
        assert "outside a document of 0" in events[0].refusal.reason
        assert "beyond the document's revision 0" in events[1].refusal.reason
        assert "over the limit of 5" in events[2].refusal.reason
        assert (events[4].revision, events[4].edit.insert_text) == (1, "ok")


async def test_history_trimmed_away_gives_a_snapshot_on_rejoin_and_failed_precondition_for_an_edit(
    tmp_path: pathlib.Path,
) -> None:
    settings = DocumentSettings(kept_revisions=2, snapshot_every=3)
    async with running_server(tmp_path / "data", documents=settings) as server, client(server.address) as conn:
        async with joined(conn, "t", "alice") as alice:
            await alice.events(1)
            for n in range(7):
                await alice.edit(n, n, text=str(n), seq=n + 1)
                await alice.events(1)
        # A snapshot at revision 6 keeps the edits making revisions 5 and 6 only. (Revision 7 is committed once
        # that snapshot is written, so its acknowledgement says the trim is done: editors are woken before it.)
        async with joined(conn, "t", "bob", last_revision=4) as bob:
            assert [(e.revision, e.edit.insert_text) for e in await bob.events(3)] == [(5, "4"), (6, "5"), (7, "6")]
        async with joined(conn, "t", "bob", last_revision=3) as bob:
            assert text_of(await bob.event()) == (7, "0123456")
            await bob.edit(3, 0, text="late", seq=1)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await bob.event()
        assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "join again without last_revision" in (ended.value.details() or "")


async def test_a_rejoin_beyond_the_document_is_out_of_range(conn: Connection) -> None:
    async with joined(conn, "far", "alice", last_revision=3) as alice:
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await alice.event()
    assert ended.value.code() == grpc.StatusCode.OUT_OF_RANGE


async def test_cursors_are_transformed_broadcast_to_others_and_never_stored(conn: Connection) -> None:
    async with joined(conn, "c", "alice") as alice, joined(conn, "c", "bob") as bob:
        await alice.events(1)
        await bob.events(1)
        await alice.edit(0, 0, text="abcdef", seq=1)
        await alice.events(1)
        await bob.events(1)
        await alice.edit(1, 0, text="字字", seq=2)  # revision 2: "字字abcdef"
        await alice.events(1)
        # bob has not seen revision 2: his cursor after "abc" (3 on revision 1) is 5 on revision 2
        await bob.call.write(pb.CollaborateRequest(cursor=pb.CollaborateCursor(position=3, base_revision=1)))
        await bob.events(1)  # revision 2
        moved = await alice.event()
        assert (moved.WhichOneof("change"), moved.user_id, moved.revision, moved.cursor.position) == (
            "cursor", "bob", 2, 5,
        )  # fmt: skip
        await alice.edit(2, 0, text="!", seq=3)
        assert (await bob.event()).revision == 3  # bob got no echo of his own cursor before it
    async with joined(conn, "c", "carol", last_revision=0) as carol:
        assert [e.WhichOneof("change") for e in await carol.events(3)] == ["edit"] * 3


async def test_documents_persist_across_a_restart(tmp_path: pathlib.Path) -> None:
    settings = DocumentSettings(snapshot_every=2)
    for round_ in range(2):
        async with (
            running_server(tmp_path / "data", documents=settings) as server,
            client(server.address) as conn,
            joined(conn, "kept", "alice", f"c{round_}") as alice,
        ):
            revision, text = text_of(await alice.event())
            assert (revision, text) == ((0, "") if round_ == 0 else (3, "abc"))
            for n, letter in enumerate("abc" if round_ == 0 else "d"):
                await alice.edit(revision + n, revision + n, text=letter, seq=n + 1)
                await alice.events(1)
    async with (
        running_server(tmp_path / "data") as server,
        client(server.address) as conn,
        joined(conn, "kept", "bob", last_revision=2) as bob,
    ):
        assert [e.edit.insert_text for e in await bob.events(2)] == ["c", "d"]


async def test_after_a_restart_a_change_based_before_the_snapshot_is_transformed_with_the_kept_edits(
    tmp_path: pathlib.Path,
) -> None:
    settings = DocumentSettings(snapshot_every=2)
    async with (
        running_server(tmp_path / "data", documents=settings) as server,
        client(server.address) as conn,
        joined(conn, "kept", "alice", "a") as alice,
    ):
        await alice.events(1)
        for n, letter in enumerate("abcd"):
            await alice.edit(n, n, text=letter, seq=n + 1)
            await alice.events(1)
    # A new server opens the document from its snapshot at revision 4; the edits before it stay in the log.
    async with running_server(tmp_path / "data", documents=settings) as server, client(server.address) as conn:
        async with joined(conn, "kept", "bob", "b") as bob:
            assert text_of(await bob.event()) == (4, "abcd")
            await bob.edit(2, 1, text="X", seq=1)  # "a|b" at revision 2: "c" and "d" came after it
            committed = await bob.event()
            assert (committed.revision, committed.edit.position, committed.edit.insert_text) == (5, 1, "X")
        async with joined(conn, "kept", "carol", "c") as carol:
            assert text_of(await carol.event()) == (5, "aXbcd")


async def test_a_change_made_offline_survives_a_rejoin_after_the_history_was_trimmed(tmp_path: pathlib.Path) -> None:
    """The server no longer keeps the edits since the session's revision: it rejoins from a snapshot and its
    change not yet acknowledged is merged onto it, not lost (and not applied twice)."""
    from streamcli.backends.sqlite import SqliteStore
    from streamcli.client.collab import DocumentSession
    from streamcli.client.retry import RetryPolicy
    from streamcli.ot import Edit, Operation
    from streamcli.services.documents import Document
    from tests.support.servers import free_port

    settings = DocumentSettings(kept_revisions=2, snapshot_every=3)
    address = f"127.0.0.1:{free_port()}"
    said: list[str] = []
    policy = RetryPolicy(retries=60, initial_delay=0.05, max_delay=0.2)
    stopped, others_done = asyncio.Event(), asyncio.Event()

    async def work(session: DocumentSession) -> tuple[str, list[str]]:
        await session.joined.wait()
        await session.local(Operation.from_edit(0, Edit(0, 0, "one ")))
        await session.settled.wait()
        stopped.clear()
        first_server_done.set()
        await stopped.wait()  # the server is gone: this change waits, unacknowledged
        await session.local(Operation.from_edit(4, Edit(4, 0, "two")))
        others_done.clear()
        offline_change_made.set()
        await others_done.wait()
        await session.settled.wait()
        while not session.joined.is_set() or session.replica.pending() is not None:
            await asyncio.sleep(0.02)
        return session.replica.text, said

    first_server_done, offline_change_made = asyncio.Event(), asyncio.Event()
    async with client(address) as conn:
        session = DocumentSession(conn, "off", "alice", retry=policy, announce=said.append)
        async with running_server(tmp_path / "data", address=address, documents=settings):
            running = asyncio.ensure_future(session.run(work))
            await asyncio.wait_for(first_server_done.wait(), 10)
        stopped.set()
        await asyncio.wait_for(offline_change_made.wait(), 10)
        # Meanwhile others make six edits (two snapshots: the history after revision 1 is trimmed away).
        store = SqliteStore(tmp_path / "data" / "streamcli.db")
        try:
            document = Document("off", store, settings)
            await document.open()
            for n in range(6):
                await document.commit("bob", "bob", n + 1, document.revision, [Edit(0, 0, "B")])
        finally:
            await store.close()
        async with running_server(tmp_path / "data", address=address, documents=settings):
            others_done.set()
            text, notices = await asyncio.wait_for(running, 30)
            async with joined(conn, "off", "carol") as carol:
                assert text_of(await carol.event()) == (8, "BBBBBBone two")
    assert text == "BBBBBBone two"
    assert any("joining again from a snapshot" in line or "reconnecting" in line for line in notices)


async def test_a_user_token_edits_as_its_user_and_its_name_is_its_own(tmp_path: pathlib.Path) -> None:
    async with running_server(tmp_path, token="shared", user_tokens={"alice": "alice-secret"}) as server:
        async with client(server.address, token="alice-secret") as conn, joined(conn, "doc", "mallory") as alice:
            await alice.events(1)
            await alice.edit(0, 0, text="hi", seq=1)
            assert (await alice.event()).user_id == "alice"
        async with client(server.address, token="shared") as conn, joined(conn, "doc", "alice") as service:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await service.event()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_session_rejoins_by_revision_after_a_restart_and_its_change_lands_once(tmp_path: pathlib.Path) -> None:
    from streamcli.client.collab import DocumentSession
    from streamcli.client.retry import RetryPolicy
    from streamcli.ot import Edit, Operation
    from tests.support.servers import free_port

    address = f"127.0.0.1:{free_port()}"
    said: list[str] = []
    policy = RetryPolicy(retries=40, initial_delay=0.05, max_delay=0.2)
    async with client(address) as conn:
        session = DocumentSession(conn, "r", "alice", retry=policy, announce=said.append)
        restarted = asyncio.Event()

        async def work(session: DocumentSession) -> tuple[int, str]:
            await session.joined.wait()
            await session.local(Operation.from_edit(0, Edit(0, 0, "one ")))
            await session.settled.wait()
            first_server.set()  # the test stops the server now, and starts another on the same data
            await restarted.wait()
            await session.local(Operation.from_edit(4, Edit(4, 0, "two")))
            await session.settled.wait()
            await session.joined.wait()
            return session.replica.revision, session.replica.text

        first_server = asyncio.Event()
        async with running_server(tmp_path / "data", address=address):
            running = asyncio.ensure_future(session.run(work))
            await asyncio.wait_for(first_server.wait(), 10)
        async with running_server(tmp_path / "data", address=address):
            restarted.set()
            assert await asyncio.wait_for(running, 20) == (2, "one two")
        assert any("reconnecting" in line for line in said)
    async with (
        running_server(tmp_path / "data", address=address),
        client(address) as conn,
        joined(conn, "r", "bob") as bob,
    ):
        assert text_of(await bob.event()) == (2, "one two")
