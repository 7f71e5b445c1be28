"""Property-based tests of the whole contract: whatever a client sends, every call ends in a documented status.

One hypothesis test per RPC of ``streaming.v1.StreamingService``, health Check and Watch, and reflection,
against one ``streamcli serve`` subprocess. Requests are random bytes, messages
drawn field by field from the request type's descriptor
(``tests/support/protostrategies.py``), and per-RPC "interesting" messages in
random orders (join twice, send before join, metadata after chunks, a trailer
twice, resumes of unknown uploads, ...). Each call must end with a status of its
row of ``ALLOWED``, never UNKNOWN or INTERNAL, and a stream holding a message
that does not decode never ends OK. After every RPC's examples the server must
still be SERVING, list only complete files, and keep its memory bounded.

Examples are derandomized (the same inputs on every run, no example database):
CI sees the same inputs every time and nothing is written to ``.hypothesis/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.services.uploads import MAX_CHUNK_SIZE
from tests.support import protostrategies as ps
from tests.support.rpc import METHODS, Outcome, call_frames
from tests.support.servers import ServeProcess, serve_process

# The 100 KB strings of the examples make hypothesis warn when it prints a failing one: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

Code = grpc.StatusCode
Item = Message | bytes  # what a test sends: a message, or raw bytes that may not be one

# --- the contract's statuses ----------------------------------------------------------------------
# Every RPC's row: each status code a call may end with, and why it is possible. UNKNOWN and INTERNAL
# are in no row: a client's mistake is never the server's failure. INVALID_ARGUMENT is in every row
# since any request may fail to decode (server/decoding.py).

_ABC_SHA256 = hashlib.sha256(b"abc").hexdigest()
_LONG_CHECKSUM = "a" * 100_000
_UNDECODABLE = "the request (or a message of the stream) does not decode, or a field is invalid"

ALLOWED: dict[str, dict[Code, str]] = {
    "StreamUserEvents": {
        Code.OK: "no_follow: the history was replayed and the stream ended",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (no user and not all_users, both, unknown type, future start)",
        Code.OUT_OF_RANGE: "resume_after_id beyond the end of the log (or trimmed by retention)",
    },
    "DownloadFile": {
        Code.OK: "the file was sent from the offset to its end",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
        Code.NOT_FOUND: "no file with that id (never stored, or deleted)",
        Code.OUT_OF_RANGE: "the offset is negative or beyond the file's size",
    },
    "SubscribeToNotifications": {
        Code.OK: "no_follow: the history was replayed and the stream ended",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (no recipient, a start time in the future)",
        Code.OUT_OF_RANGE: "resume_after_id beyond the end of the log (or trimmed by retention)",
    },
    "UploadFile": {
        Code.OK: "a complete upload whose bytes hash to its checksum",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (bad name, id, size or checksum; messages out of order)",
        Code.NOT_FOUND: "a resume of an upload the server does not have",
        Code.ALREADY_EXISTS: "a new upload under the id of one that exists",
        Code.FAILED_PRECONDITION: "the stream ended before the declared bytes; a resume at the wrong offset",
        Code.DATA_LOSS: "the bytes do not hash to the declared checksum",
        Code.RESOURCE_EXHAUSTED: "larger than serve --max-file-size",
    },
    "UploadFiles": {
        # A refused file (bad name, size or checksum, too large) is answered in-band, not a failure of the stream.
        Code.OK: "every message was a file (stored or refused one by one)",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
    },
    "ProcessDataBatch": {
        # A refused record is counted in the response, not a failure of the stream.
        Code.OK: "every message was usable (records valid or refused one by one)",
        Code.INVALID_ARGUMENT: _UNDECODABLE
        + " (bad batch_id or source, first_index without a batch, too many records)",
        Code.FAILED_PRECONDITION: "a message starts beyond the batch's next index (a gap)",
    },
    "CollectMetrics": {
        # A refused sample is counted in the response, not a failure of the stream.
        Code.OK: "every message was usable (samples valid or refused one by one)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (bad push_id, first_index without a push, too many samples)",
        Code.FAILED_PRECONDITION: "a message starts beyond the push's next index (a gap)",
    },
    "PublishEvents": {
        # INTERNAL is documented for a store that fails (a full disk), which no example provokes.
        Code.OK: "every event was valid and appended",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (no user, control characters, unknown type, undescribed data)",
    },
    "Chat": {
        Code.OK: "the client half-closed after its join; everything was delivered",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (first message not a join, a bad room or user id)",
        Code.ALREADY_EXISTS: "the user is in the room in another session (without allow_duplicate)",
        Code.OUT_OF_RANGE: "resume_after_id beyond the end of the room",
    },
    "Collaborate": {
        # A bad edit or cursor is refused in-band; only the join, a message or trimmed history end the stream.
        Code.OK: "the client half-closed after its join; every edit was committed or refused in-band",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (first message not a join, a bad document, user or client id)",
        Code.OUT_OF_RANGE: "last_revision beyond the document's revision",
    },
    "ProcessLiveData": {
        # An invalid input (empty key, NaN) is answered in-band; only the options or a message end the stream.
        Code.OK: "every message was usable (inputs processed or answered with an error one by one)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (window, z, max_keys or window_duration out of range)",
    },
    "GetUploadStatus": {
        Code.OK: "the upload exists",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
        Code.NOT_FOUND: "no such upload (never started, completed, failed or expired)",
    },
    "GetFileInfo": {
        Code.OK: "the file exists",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
        Code.NOT_FOUND: "no such file",
    },
    "ListFiles": {
        Code.OK: "a page (maybe empty)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (page_size outside 0-1000, a page_token not from the server)",
    },
    "DeleteFile": {
        Code.OK: "the file was deleted",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
        Code.NOT_FOUND: "no such file (or already deleted)",
    },
    "SendNotification": {
        Code.OK: "stored",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (a required field empty, too long, control characters, severity)",
    },
    "ListDocuments": {
        Code.OK: "a page of documents (any caller sees every document: they are open, as rooms are)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (page_size over 1000)",
    },
    "ListRoomMembers": {
        Code.OK: "any room id is a question with an answer (no members)",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
    },
    "StreamRoomMessages": {
        Code.OK: "no_follow: the history was replayed (any valid room id: rooms are open), or end_time passed",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (a bad room id, a start time in the future, an invalid end time)",
        Code.OUT_OF_RANGE: "resume_after_id beyond the end of the room's log (or trimmed by retention)",
    },
    "ListBatches": {
        Code.OK: "a page (maybe empty)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (page_size outside 0-1000, a page_token not from the server)",
    },
    "GetBatch": {
        Code.OK: "the batch exists",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (not a batch id)",
        Code.NOT_FOUND: "no such batch",
    },
    "ListMetricSeries": {
        Code.OK: "a page (maybe empty)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (page_size outside 0-1000, a bad page_token, quantile or since)",
    },
    "ReadBatchRecords": {
        Code.OK: "the batch's records were sent",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (not a batch id)",
        Code.NOT_FOUND: "no such batch",
    },
    "ResolveIds": {
        Code.OK: "the ids the caller may list that begin with the prefix (maybe none)",
        Code.INVALID_ARGUMENT: _UNDECODABLE + " (kind unset or unknown, limit over 100, a prefix under 4 characters)",
    },
    "Health/Check": {
        Code.OK: "a service the server knows",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
        Code.NOT_FOUND: "a service the server does not know (grpc health's own answer)",
    },
    "Health/Watch": {
        # Never ends by itself: the test stops reading after the first answer (SERVICE_UNKNOWN included).
        Code.INVALID_ARGUMENT: _UNDECODABLE,
    },
    "Reflection": {
        # Unknown symbols and files are answered in-band with an error_response; the stream ends OK.
        Code.OK: "the client half-closed; every request was answered",
        Code.INVALID_ARGUMENT: _UNDECODABLE,
    },
}

#: Streams that follow live and never end by themselves: the test reads a few responses and cancels.
#: For these only, CANCELLED (by the test) and DEADLINE_EXCEEDED (the test's bound) are allowed too.
LIVE = {"StreamUserEvents": 3, "SubscribeToNotifications": 3, "StreamRoomMessages": 3, "Health/Watch": 1}


@dataclasses.dataclass(frozen=True)
class Rpc:
    """One method under test: where it is and how it streams."""

    name: str
    path: str
    request: Descriptor
    response: type[Message]
    client_streaming: bool
    server_streaming: bool


def _rpcs() -> dict[str, Rpc]:
    from google.protobuf.message_factory import GetMessageClass

    rpcs = {
        m.name: Rpc(
            m.name,
            f"/{m.containing_service.full_name}/{m.name}",
            m.input_type,
            GetMessageClass(m.output_type),
            m.client_streaming,
            m.server_streaming,
        )
        for m in METHODS
    }
    health = "/grpc.health.v1.Health/"
    check, response = health_pb2.HealthCheckRequest.DESCRIPTOR, health_pb2.HealthCheckResponse
    rpcs["Health/Check"] = Rpc("Health/Check", health + "Check", check, response, False, False)
    rpcs["Health/Watch"] = Rpc("Health/Watch", health + "Watch", check, response, False, True)
    rpcs["Reflection"] = Rpc(
        "Reflection",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        reflection_pb2.ServerReflectionRequest.DESCRIPTOR,
        reflection_pb2.ServerReflectionResponse,
        True,
        True,
    )
    return rpcs


RPCS = _rpcs()


def test_the_table_covers_every_rpc_of_the_contract() -> None:
    """A method added to the proto must get its row (and so its property test)."""
    assert {m.name for m in METHODS} | {"Health/Check", "Health/Watch", "Reflection"} == set(ALLOWED)
    for row in ALLOWED.values():
        assert Code.UNKNOWN not in row and Code.INTERNAL not in row


# --- the server ------------------------------------------------------------------------------------

#: Placeholders the strategies use for ids only the running server knows (file ids are random).
KEPT = ("@kept-0", "@kept-1")  # stored before the examples; never deleted (downloads need them)
DOOMED = ("@doomed-0", "@doomed-1", "@doomed-2")  # stored before the examples, for DeleteFile
KEPT_SIZES = (0, 200_000)  # an empty file, and one of several download chunks
MAX_FILE_SIZE = 8 * 1024 * 1024  # serve --max-file-size: larger declared sizes are RESOURCE_EXHAUSTED


@dataclasses.dataclass
class PropertyServer:
    """The ``streamcli serve`` subprocess of this module, the ids it assigned, and its memory over time."""

    serve: ServeProcess
    ids: dict[str, str]
    rss_kib: list[int] = dataclasses.field(default_factory=list)

    @property
    def address(self) -> str:
        return self.serve.address

    def rss(self) -> int:
        """The server's resident memory now, in KiB (Linux /proc)."""
        status = pathlib.Path(f"/proc/{self.serve.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])

    def resolve(self, item: Item) -> bytes:
        """The wire bytes of ``item``, with the placeholders of stored files replaced by their ids."""
        if isinstance(item, Message):
            item = _copy(item)
            _replace_strings(item, self.ids)
        return ps.frame(item)


def _copy(message: Message) -> Message:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _replace_strings(message: Message, mapping: dict[str, str]) -> None:
    for field, value in message.ListFields():
        if field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                _replace_strings(item, mapping)
        elif field.type == field.TYPE_STRING and not field.is_repeated and value in mapping:
            setattr(message, field.name, mapping[value])


def _upload_frames(content: bytes, name: str) -> list[bytes]:
    checksum = hashlib.sha256(content).hexdigest()
    meta = pb.FileMetadata(filename=name, total_size=len(content), checksum=checksum)
    chunks = [content[i : i + 65536] for i in range(0, len(content), 65536)]
    return [pb.UploadFileRequest(metadata=meta).SerializeToString()] + [
        pb.UploadFileRequest(chunk=c).SerializeToString() for c in chunks
    ]


def _seed(address: str) -> dict[str, str]:
    """Store the files, event and notification the examples refer to."""
    ids = {}
    with _channel(address) as channel:
        upload = RPCS["UploadFile"]
        to_store = [*zip(KEPT, KEPT_SIZES, strict=True), *((p, 10) for p in DOOMED)]
        for placeholder, size in to_store:
            content = hashlib.sha256(placeholder.encode()).digest() * (size // 32 + 1)
            frames = _upload_frames(content[:size], placeholder.lstrip("@") + ".bin")
            outcome = _call(channel, upload, frames)
            assert outcome.code == Code.OK, outcome
            ids[placeholder] = outcome.responses[0].file_id
        event = pb.UserEvent(user_id="alice", type=pb.USER_EVENT_TYPE_LOGIN)
        published = _call(channel, RPCS["PublishEvents"], [pb.PublishEventsRequest(events=[event] * 3)])
        notified = _call(
            channel, RPCS["SendNotification"], [pb.SendNotificationRequest(recipient="alice", topic="t", title="hi")]
        )
        assert published.code == notified.code == Code.OK, (published, notified)
    return ids


@pytest.fixture(scope="module")
def prop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PropertyServer]:
    """One ``streamcli serve`` subprocess for every example of the module (its memory is measured)."""
    tmp = tmp_path_factory.mktemp("properties")
    # A short heartbeat: live streams answer again quickly, so reading a few responses takes little time.
    args = ("--heartbeat", "0.1", "--max-file-size", str(MAX_FILE_SIZE))
    with serve_process(tmp, *args) as serve:
        yield PropertyServer(serve, _seed(serve.address))


# --- calling ---------------------------------------------------------------------------------------


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=transport.client_options())


def _call(channel: grpc.Channel, rpc: Rpc, frames: Sequence[bytes | Message]) -> Outcome:
    return call_frames(
        channel,
        rpc.path,
        [ps.frame(f) for f in frames],
        rpc.response,
        client_streaming=rpc.client_streaming,
        server_streaming=rpc.server_streaming,
        max_responses=LIVE.get(rpc.name),
    )


def _call_once(address: str, rpc: Rpc, frames: Sequence[bytes | Message]) -> Outcome:
    """One call on a channel of its own (a call that breaks its connection cannot affect the next)."""
    with _channel(address) as channel:
        return _call(channel, rpc, frames)


def check_call(server: PropertyServer, rpc: Rpc, items: list[Item]) -> None:
    """Send ``items`` on one call of ``rpc`` and check how it ended against the contract."""
    frames = [server.resolve(item) for item in items]
    outcome = _call_once(server.address, rpc, frames)
    shown = f"{rpc.name} ended {outcome.code.name}: {outcome.details[:500]!r}"
    allowed = ALLOWED[rpc.name]
    if rpc.name in LIVE:
        # Ended by the test's own bound: the stream was still following live, as it should.
        assert outcome.code in allowed or outcome.cancelled_by_us or outcome.code == Code.DEADLINE_EXCEEDED, shown
    else:
        assert outcome.code in allowed and not outcome.cancelled_by_us, shown
    # The status is the server's, not one the client's gRPC library made up when the call broke
    # (a RESOURCE_EXHAUSTED over a header too large, say, is in UploadFile's row for another reason).
    assert "Stream removed" not in outcome.details, shown
    if outcome.code == Code.UNIMPLEMENTED:
        assert rpc.name in outcome.details, shown
    type_name = rpc.request.full_name
    bad = [i for i, frame in enumerate(frames) if not ps.decodes(rpc.request, frame)]
    if not bad:
        return
    if not rpc.client_streaming:
        assert outcome.code == Code.INVALID_ARGUMENT, shown
        assert f"the request is not a valid {type_name}" in outcome.details, shown
        return
    # A stream with a message that does not decode never ends OK; if the server got as far as the
    # bad message (it may refuse an earlier one first), the detail names the first one's index.
    assert outcome.code != Code.OK, shown
    if "of the request stream is not a valid" in outcome.details:
        assert f"message {bad[0]} of the request stream is not a valid {type_name}" in outcome.details, shown


# --- what to send ----------------------------------------------------------------------------------

USERS = ("alice", "bob", "carol.x", "", "system", "a" * 33, "nul\x00", "\x1b[31m")
ROOMS = ("lobby", "room-2", "", "a" * 65, "bad room", "../x")
UPLOAD_IDS = ("", "prop-a", "prop-b", "prop-c", "bad id!", "x" * 65, "../escape")
BATCH_IDS = ("", "batch-a", "batch-b", "bad id!", "x" * 65, "alice/batch-a", "../x")
LOG_IDS = (0, 1, 2, 3, 4, 10**6, 2**63 - 1, 2**63, 2**64 - 1)  # around the seeded log, and beyond int64
EVENT_TYPES = (0, 1, 2, 3, 4, 5, -1, 2**31 - 1)
SEVERITIES = (0, 1, 2, 3, 4, -1)
OFFSETS = (0, 1, 65535, 65536, 199_999, 200_000, 200_001, -1, -(2**63), 2**63 - 1)


def _timestamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def optional_timestamps() -> st.SearchStrategy[Timestamp | None]:
    """No start time, the epoch, a recent time, the far future, and invalid timestamps."""
    return st.one_of(
        st.none(),
        st.sampled_from(
            [(0, 0), (1_700_000_000, 0), (253_402_300_800, 0), (-(2**63), 0), (2**63 - 1, 999_999_999)]
        ).map(lambda t: _timestamp(*t)),
        ps.timestamps(),
    )


def mostly(valid: Sequence[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``valid`` three times in four, else a value of ``other``: most calls get past the
    first check, so that what lies behind it is exercised too."""
    return st.integers(0, 3).flatmap(lambda n: st.sampled_from(valid) if n else other)


def names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(USERS), ps.texts())


def _file_ids() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(KEPT), st.sampled_from(["", "0" * 32, "../files/x"]), ps.texts())


def _events() -> st.SearchStrategy[pb.UserEvent]:
    return st.builds(
        lambda user, kind, data, when: pb.UserEvent(user_id=user, type=kind, data=data, timestamp=when),
        mostly(USERS[:3], names()),
        mostly([1, 2], st.sampled_from(EVENT_TYPES)),
        mostly([any_pb2.Any()], ps.anys()),
        mostly([None], optional_timestamps()),
    )


def _chat_join() -> st.SearchStrategy[pb.ChatRequest]:
    return st.builds(
        lambda room, user, backlog, resume, dup: pb.ChatRequest(
            join=pb.ChatJoin(room_id=room, user_id=user, backlog=backlog, resume_after_id=resume, allow_duplicate=dup)
        ),
        mostly(ROOMS[:2], st.sampled_from(ROOMS)),
        mostly(USERS[:3], st.sampled_from(USERS)),
        st.sampled_from([0, 1, 5, 2**32 - 1]),
        mostly([0], st.sampled_from([1, 2, 10**6, 2**64 - 1])),
        st.booleans(),
    )


def _chat_send() -> st.SearchStrategy[pb.ChatRequest]:
    return st.builds(
        lambda kind, content, file_id: pb.ChatRequest(send=pb.ChatSend(type=kind, content=content, file_id=file_id)),
        mostly([1], st.sampled_from([0, 2, 3, 4, 5, 99])),
        mostly(["hi", "@bob look", "@alice @alice", " "], ps.texts()),
        st.sampled_from(["", KEPT[1], "nope"]),
    )


def _upload_steps(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[Item]:
    """A plausible upload (metadata or resume, chunks, maybe a trailer), then perhaps one thing done wrong."""
    content = draw(
        st.one_of(
            st.binary(max_size=300),
            st.sampled_from([(b"y", 150_000), (b"z", MAX_CHUNK_SIZE + 1)]).map(lambda spec: spec[0] * spec[1]),
        )
    )
    checksum = hashlib.sha256(content).hexdigest()
    upload_id = draw(mostly([""], st.sampled_from(UPLOAD_IDS)))
    style = draw(st.sampled_from(["declared", "trailer", "unknown-size", "resume"]))
    size = len(content)
    declared = draw(mostly([size], st.sampled_from([size + 1, max(size - 1, 0), -1, -2, MAX_FILE_SIZE + 1, 2**63 - 1])))
    wrong_checksum = draw(st.booleans()) and draw(st.booleans())  # a quarter of them
    stated = ("0" * 64) if wrong_checksum else checksum
    name = draw(mostly(["report.pdf", "a" * 255, "é" * 128], ps.texts()))
    steps: list[Item] = []
    if style == "resume":
        offset = draw(st.sampled_from([0, 1, 3, 150, -1, 2**62]))
        steps.append(pb.UploadFileRequest(resume=pb.UploadResume(upload_id=upload_id, offset=offset)))
        content = content[offset:] if 0 <= offset <= size else content
    else:
        meta = pb.FileMetadata(
            filename=name,
            total_size=-1 if style == "unknown-size" else declared,
            content_type=draw(st.sampled_from(["", "text/plain"]) | ps.texts()),
            checksum=stated if style == "declared" else "",
        )
        steps.append(pb.UploadFileRequest(metadata=meta, upload_id=upload_id))
    pieces = draw(st.integers(1, 3))
    step = max(1, -(-len(content) // pieces))
    steps += [pb.UploadFileRequest(chunk=content[i : i + step]) for i in range(0, len(content), step)]
    if style in ("trailer", "unknown-size", "resume"):
        steps.append(pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=size, checksum=stated)))
    mistake = draw(
        st.sampled_from(["none"] * 4 + ["duplicate", "drop", "swap", "metadata-again", "trailer-twice", "empty-chunk"])
    )
    if mistake == "duplicate" and len(steps) > 1:
        index = draw(st.integers(0, len(steps) - 1))
        steps.insert(index, steps[index])
    elif mistake == "drop" and len(steps) > 1:
        del steps[draw(st.integers(0, len(steps) - 1))]
    elif mistake == "swap" and len(steps) > 2:
        i, j = draw(st.integers(0, len(steps) - 1)), draw(st.integers(0, len(steps) - 1))
        steps[i], steps[j] = steps[j], steps[i]
    elif mistake == "metadata-again":
        steps.append(steps[0])
    elif mistake == "trailer-twice":
        steps.append(steps[-1])
    elif mistake == "empty-chunk":
        steps.insert(draw(st.integers(1, len(steps))), pb.UploadFileRequest(chunk=b""))
    return steps


@st.composite
def upload_scenarios(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[Item]:
    return _upload_steps(draw)


def with_bad_message(steps: st.SearchStrategy[list[Item]], request: Descriptor) -> st.SearchStrategy[list[Item]]:
    """``steps``, and sometimes the same with bytes that do not decode inserted somewhere."""

    @st.composite
    def corrupted(draw: Callable[[st.SearchStrategy[Any]], Any]) -> list[Item]:
        items = list(draw(steps))
        if draw(st.integers(0, 3)) == 0:
            items.insert(draw(st.integers(0, len(items))), draw(ps.undecodable(request)))
        return items

    return corrupted()


#: Messages worth sending to each RPC beyond the generic ones: ids that exist, edge values of the
#: fields the server checks, and for streams whole scenarios in random orders.
INTERESTING: dict[str, st.SearchStrategy[Any]] = {
    "StreamUserEvents": st.builds(
        lambda user, all_users, types, resume, start, no_follow: pb.StreamUserEventsRequest(
            user_id=user,
            all_users=all_users,
            event_types=types,
            resume_after_id=resume,
            start_time=start,
            no_follow=no_follow,
        ),
        mostly(["alice"], names()),
        st.integers(0, 3).map(lambda n: n == 0),  # all_users a quarter of the time
        st.lists(mostly([1, 2, 3, 4], st.sampled_from(EVENT_TYPES)), max_size=3),
        st.sampled_from(LOG_IDS),
        optional_timestamps(),
        st.booleans(),
    ),
    "SubscribeToNotifications": st.builds(
        lambda recipient, topics, resume, start, no_follow: pb.SubscribeToNotificationsRequest(
            recipient=recipient, topics=topics, resume_after_id=resume, start_time=start, no_follow=no_follow
        ),
        mostly(["*", "alice"], names()),
        st.lists(mostly(["t", "files", "chat"], ps.texts()), max_size=3),
        st.sampled_from(LOG_IDS),
        optional_timestamps(),
        st.booleans(),
    ),
    "StreamRoomMessages": st.builds(
        lambda room, resume, start, no_follow, tail, end: pb.StreamRoomMessagesRequest(
            room_id=room, resume_after_id=resume, start_time=start, no_follow=no_follow, tail=tail, end_time=end
        ),
        mostly(["lobby", "props"], names()),
        st.sampled_from(LOG_IDS),
        optional_timestamps(),
        st.booleans(),
        st.sampled_from([0, 1, 10, 2**32 - 1]),
        optional_timestamps(),
    ),
    "DownloadFile": st.builds(
        lambda file_id, offset: pb.DownloadFileRequest(file_id=file_id, offset=offset),
        _file_ids(),
        st.sampled_from(OFFSETS),
    ),
    "UploadFile": upload_scenarios(),
    "UploadFiles": st.lists(
        st.builds(
            lambda name, size, checksum, content: pb.UploadFilesRequest(
                metadata=pb.FileMetadata(filename=name, total_size=size, checksum=checksum), content=content
            ),
            mostly(["a.txt", "b"], names()),
            st.sampled_from([-1, 0, 3, 2**20 + 1, 2**63 - 1]),
            st.sampled_from([_ABC_SHA256, _ABC_SHA256.upper(), "", "x", _LONG_CHECKSUM]),
            st.sampled_from([b"", b"abc", b"abd", b"x" * (2**20 + 1)]),
        ),
        max_size=4,
    ),
    "PublishEvents": st.lists(
        st.lists(_events(), max_size=4).map(lambda events: pb.PublishEventsRequest(events=events)), max_size=4
    ),
    "Chat": st.one_of(
        st.tuples(
            _chat_join(), st.lists(st.one_of(_chat_send(), _chat_join(), st.just(pb.ChatRequest(who=True))), max_size=6)
        ),
        st.tuples(_chat_send(), st.lists(_chat_join(), max_size=2)),  # send before join
    ).map(lambda pair: [pair[0], *pair[1]]),
    "Collaborate": st.lists(
        st.sampled_from(
            [
                pb.CollaborateRequest(join=pb.CollaborateJoin(document_id="doc", user_id="alice")),
                pb.CollaborateRequest(join=pb.CollaborateJoin(document_id="doc", user_id="bob", last_revision=0)),
                pb.CollaborateRequest(join=pb.CollaborateJoin(document_id="doc", user_id="c", last_revision=2**64 - 1)),
                pb.CollaborateRequest(join=pb.CollaborateJoin(document_id="../x", user_id="alice")),
                pb.CollaborateRequest(edit=pb.CollaborateEdit(base_revision=2**64 - 1, edit=pb.TextEdit(position=5))),
                pb.CollaborateRequest(edit=pb.CollaborateEdit(edit=pb.TextEdit(insert_text="😀字"), client_seq=1)),
                pb.CollaborateRequest(edit=pb.CollaborateEdit(edit=pb.TextEdit(delete_count=2**64 - 1), parts_after=3)),
                pb.CollaborateRequest(edit=pb.CollaborateEdit(edit=pb.TextEdit(insert_text="\x1b"), client_seq=2)),
                pb.CollaborateRequest(cursor=pb.CollaborateCursor(position=1)),
                pb.CollaborateRequest(cursor=pb.CollaborateCursor(position=2**64 - 1, base_revision=2**64 - 1)),
                pb.CollaborateRequest(),
            ]
        ),
        max_size=4,
    ),
    "ProcessDataBatch": st.lists(
        st.builds(
            lambda batch_id, first, records, complete: pb.ProcessDataBatchRequest(
                batch_id=batch_id, first_index=first if batch_id else 0, records=records, complete=complete
            ),
            st.sampled_from(BATCH_IDS),
            st.sampled_from([0, 1, 2, 5, 2**64 - 1]),
            st.lists(
                st.builds(
                    lambda key, value: pb.DataRecord(key=key, value=value),
                    mostly(["k"], ps.texts()),
                    st.floats(allow_nan=True, allow_infinity=True),
                ),
                max_size=3,
            ),
            st.booleans(),
        ),
        max_size=4,
    ),
    "ProcessLiveData": st.lists(
        st.builds(
            lambda inputs, window, z, max_keys, seconds: pb.ProcessLiveDataRequest(
                inputs=inputs,
                window=window,
                z=z,
                max_keys=max_keys,
                window_duration=None if seconds is None else Duration(seconds=seconds),
            ),
            st.lists(
                st.builds(
                    lambda sequence, key, value, stamp: pb.DataInput(
                        sequence=sequence, key=key, value=value, timestamp=stamp
                    ),
                    st.sampled_from([0, 1, 2**64 - 1]),
                    mostly(["cpu", "", "k"], ps.texts()),
                    st.floats(allow_nan=True, allow_infinity=True),
                    optional_timestamps(),
                ),
                max_size=3,
            ),
            st.sampled_from([0, 1, 2, 10_000, 10_001, 2**32 - 1]),
            st.sampled_from([0.0, 3.0, -1.0, math.nan, math.inf]),
            st.sampled_from([0, 1, 10_000, 10_001]),
            st.sampled_from([None, 0, 1, -5, 10**9]),
        ),
        max_size=4,
    ),
    "CollectMetrics": st.lists(
        st.builds(
            lambda push_id, first, samples: pb.CollectMetricsRequest(
                push_id=push_id, first_index=first if push_id else 0, metrics=samples
            ),
            st.sampled_from(["", "push-a", "bad id!", "x" * 65]),
            st.sampled_from([0, 1, 2, 5, 2**64 - 1]),
            st.lists(
                st.builds(
                    lambda name, value, labels: pb.MetricData(name=name, value=value, labels=labels),
                    mostly(["cpu.load", "m"], ps.texts()),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.dictionaries(mostly(["host", "le"], ps.texts()), ps.texts(), max_size=3),
                ),
                max_size=3,
            ),
        ),
        max_size=4,
    ),
    "ListMetricSeries": st.builds(
        lambda name, size, token, quantiles: pb.ListMetricSeriesRequest(
            name=name, page_size=size, page_token=token, quantiles=quantiles
        ),
        mostly(["", "cpu.load"], ps.texts()),
        st.sampled_from([0, 1, 1001, -1]),
        st.sampled_from(["", "0", "1", "a", "\u00b2"]),
        st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=3),
    ),
    "ListBatches": st.builds(
        lambda size, token: pb.ListBatchesRequest(page_size=size, page_token=token),
        st.sampled_from([0, 1, 1001, -1]),
        st.sampled_from(["", "0", "1", "a", "1" * 30, "\u00b2"]),
    ),
    "GetBatch": st.builds(lambda b: pb.GetBatchRequest(batch_id=b), mostly(BATCH_IDS, ps.texts())),
    "ReadBatchRecords": st.builds(lambda b: pb.ReadBatchRecordsRequest(batch_id=b), mostly(BATCH_IDS, ps.texts())),
    "GetUploadStatus": st.builds(lambda u: pb.GetUploadStatusRequest(upload_id=u), st.sampled_from(UPLOAD_IDS)),
    "GetFileInfo": st.builds(lambda f: pb.GetFileInfoRequest(file_id=f), _file_ids()),
    "ResolveIds": st.builds(
        lambda kind, prefix, limit: pb.ResolveIdsRequest(kind=kind, prefix=prefix, limit=limit),
        st.sampled_from([pb.ID_KIND_FILE, pb.ID_KIND_BATCH, 0, 7]),
        mostly(["", "abc", "abcd", "alice/", "alice/abcd", "\U0010ffff" * 4, "a" * 600], ps.texts()),
        st.sampled_from([0, 1, 100, 101, 2**32 - 1]),
    ),
    "ListFiles": st.builds(
        lambda size, token: pb.ListFilesRequest(page_size=size, page_token=token),
        st.sampled_from([0, 1, 2, 1000, 1001, -1, -(2**31), 2**31 - 1]),
        st.sampled_from(["", "0", "1", "3", "10", "-1", "a", "1" * 30, "\u00b2", "\uff11"]),
    ),
    "DeleteFile": st.builds(lambda f: pb.DeleteFileRequest(file_id=f), mostly(DOOMED, ps.texts())),
    "SendNotification": st.builds(
        lambda recipient, topic, title, body, severity, attributes: pb.SendNotificationRequest(
            recipient=recipient, topic=topic, title=title, body=body, severity=severity, attributes=attributes
        ),
        mostly(["*", "alice"], names()),
        mostly(["t", "chat"], ps.texts()),
        mostly(["hello"], ps.texts()),
        st.sampled_from(["", "line\nand\ttab"]) | ps.texts(),
        mostly([1], st.sampled_from(SEVERITIES)),
        st.dictionaries(ps.texts(), ps.texts(), max_size=2),
    ),
    "ListRoomMembers": st.builds(lambda r: pb.ListRoomMembersRequest(room_id=r), st.sampled_from(ROOMS)),
    "ListDocuments": st.builds(
        lambda size, after: pb.ListDocumentsRequest(page_size=size, after_document_id=after),
        st.sampled_from([0, 1, 1000, 1001, 2**32 - 1]),
        mostly(["", "doc", "\U0010ffff"], ps.texts()),
    ),
    "Health/Check": st.builds(
        lambda s: health_pb2.HealthCheckRequest(service=s),
        st.sampled_from(["", "streaming.v1.StreamingService", "no.such.Service"]),
    ),
    "Reflection": st.lists(
        st.one_of(
            st.just(reflection_pb2.ServerReflectionRequest(list_services="")),
            st.builds(
                lambda s: reflection_pb2.ServerReflectionRequest(file_containing_symbol=s),
                st.sampled_from(["streaming.v1.StreamingService", "streaming.v1.ChatRequest", "grpc.health.v1.Health"])
                | ps.texts(),
            ),
            st.builds(
                lambda f: reflection_pb2.ServerReflectionRequest(file_by_filename=f),
                mostly(["streaming/v1/streaming_service.proto", "google/protobuf/any.proto"], ps.texts()),
            ),
            st.builds(
                lambda t, n: reflection_pb2.ServerReflectionRequest(
                    file_containing_extension=reflection_pb2.ExtensionRequest(containing_type=t, extension_number=n)
                ),
                mostly(["streaming.v1.ChatRequest", "google.protobuf.Any"], ps.texts()),
                ps.integers(ps.INT32),
            ),
            st.builds(
                lambda t: reflection_pb2.ServerReflectionRequest(all_extension_numbers_of_type=t),
                mostly(["streaming.v1.ChatRequest"], ps.texts()),
            ),
        ),
        max_size=4,
    ),
}
INTERESTING["Health/Watch"] = INTERESTING["Health/Check"]


def requests_for(rpc: Rpc) -> st.SearchStrategy[list[Item]]:
    """What one call of ``rpc`` sends: one request, or a stream of them.

    Mostly the RPC's interesting messages (which get past the first checks and reach the server's
    state), else messages drawn from the type's descriptor, or bytes that are not a message.
    """
    generic = ps.messages(rpc.request)
    bad = ps.undecodable(rpc.request)
    interesting = INTERESTING.get(rpc.name)
    if not rpc.client_streaming:
        single = st.sampled_from([bad, generic, *([interesting] * 3 if interesting is not None else [])])
        return single.flatmap(lambda strategy: strategy).map(lambda item: [item])
    streams = [st.lists(st.sampled_from([generic, generic, bad]).flatmap(lambda strategy: strategy), max_size=5)]
    if interesting is not None:
        streams += [with_bad_message(interesting, rpc.request)] * 3
    return st.sampled_from(streams).flatmap(lambda strategy: strategy)


#: Examples per RPC: enough for every branch of the strategies to come up, within the suite's time budget.
EXAMPLES = 60
#: RPCs with scenarios that branch more get more.
MORE_EXAMPLES = {"UploadFile": 250, "UploadFiles": 120, "PublishEvents": 120, "Chat": 120}

_LONG = "a" * 100_000
_LONG_NOT_FOUND = [
    # Each once made a status detail that quoted the whole id: a 100 KB grpc-message header, which
    # the client refuses (over its 16 KiB limit), so the caller saw RESOURCE_EXHAUSTED instead of NOT_FOUND.
    ("DownloadFile", pb.DownloadFileRequest(file_id=_LONG)),
    ("GetFileInfo", pb.GetFileInfoRequest(file_id=_LONG)),
    ("DeleteFile", pb.DeleteFileRequest(file_id=_LONG)),
    ("GetUploadStatus", pb.GetUploadStatusRequest(upload_id=_LONG)),
]

#: Inputs kept as explicit examples: each once made a call end with a status outside its row.
REGRESSIONS: dict[str, list[list[Item]]] = {
    **{name: [[request]] for name, request in _LONG_NOT_FOUND},
    "UploadFile": [
        [pb.UploadFileRequest(resume=pb.UploadResume(upload_id=_LONG))],  # the same, for a resume
        [  # the same, for a trailer's checksum
            pb.UploadFileRequest(metadata=pb.FileMetadata(filename="a", total_size=1)),
            pb.UploadFileRequest(chunk=b"a"),
            pb.UploadFileRequest(trailer=pb.UploadTrailer(total_size=1, checksum=_LONG)),
        ],
    ],
    # A start time protobuf's Timestamp refuses to convert (after year 9999, negative nanos): UNKNOWN.
    "StreamUserEvents": [
        [pb.StreamUserEventsRequest(user_id="alice", no_follow=True, start_time=_timestamp(253_402_300_800))],
        [pb.StreamUserEventsRequest(user_id="alice", no_follow=True, start_time=_timestamp(0, -1))],
    ],
    "SubscribeToNotifications": [
        [pb.SubscribeToNotificationsRequest(recipient="*", no_follow=True, start_time=_timestamp(-(2**63)))],
        [pb.SubscribeToNotificationsRequest(recipient="*", no_follow=True, end_time=_timestamp(0, -1))],
    ],
    "StreamRoomMessages": [
        [pb.StreamRoomMessagesRequest(room_id="lobby", tail=2**32 - 1, end_time=_timestamp(253_402_300_800))],
    ],
    # Page tokens that str.isdigit() accepts and SQLite (beyond int64) or int() (not ASCII) do not:
    # the call ended UNKNOWN.
    "ListFiles": [[pb.ListFilesRequest(page_token="1" * 30)], [pb.ListFilesRequest(page_token="\u00b2")]],
}


@pytest.mark.parametrize("name", list(ALLOWED))
def test_every_call_ends_with_a_documented_status(prop_server: PropertyServer, name: str) -> None:
    """Whatever is sent to ``name``, the call ends with a status of its row of ALLOWED."""
    rpc = RPCS[name]

    @settings(
        max_examples=MORE_EXAMPLES.get(name, EXAMPLES),
        deadline=None,  # real calls over a real network: their duration is not the property
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(items=requests_for(rpc))
    def property_(items: list[Item]) -> None:
        check_call(prop_server, rpc, items)

    for items in REGRESSIONS.get(name, []):
        property_ = example(items=items)(property_)
    property_()
    prop_server.rss_kib.append(prop_server.rss())


# --- after the examples ----------------------------------------------------------------------------

#: The server's resident memory must stay under this (it is about 60-100 MB at rest).
RSS_LIMIT_KIB = 400 * 1024
#: Growth allowed between the middle and the end of the run: far more than a cache fills, far less
#: than a leak of what the examples sent (several hundred MB of 100 KB strings and 1 MiB chunks).
RSS_GROWTH_KIB = 120 * 1024


def _all_files(address: str) -> list[tuple[pb.FileInfo, bytes]]:
    """Every listed file and its downloaded bytes."""
    found = []
    with _channel(address) as channel:
        token = ""
        while True:
            page = _call(channel, RPCS["ListFiles"], [pb.ListFilesRequest(page_size=2, page_token=token)])
            assert page.code == Code.OK, page
            for info in page.responses[0].files:
                download = _call(channel, RPCS["DownloadFile"], [pb.DownloadFileRequest(file_id=info.file_id)])
                assert download.code == Code.OK, (info, download)
                found.append((info, b"".join(r.data for r in download.responses)))
            token = page.responses[0].next_page_token
            if not token:
                return found


def test_after_the_examples_the_server_serves_lists_only_whole_files_and_stays_small(
    prop_server: PropertyServer,
) -> None:
    check = _call_once(prop_server.address, RPCS["Health/Check"], [health_pb2.HealthCheckRequest()])
    assert check.code == Code.OK and check.responses[0].status == health_pb2.HealthCheckResponse.SERVING
    files = _all_files(prop_server.address)
    assert {prop_server.ids[k] for k in KEPT} <= {info.file_id for info, _ in files}
    for info, data in files:
        assert len(data) == info.size, info
        assert hashlib.sha256(data).hexdigest() == info.checksum, info
    samples = [*prop_server.rss_kib, prop_server.rss()]
    assert max(samples) < RSS_LIMIT_KIB, samples
    assert samples[-1] - samples[len(samples) // 2] < RSS_GROWTH_KIB, samples
