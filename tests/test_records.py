"""The one-line views of events and notifications (``tail`` without --json)."""

from __future__ import annotations

from rich.text import Text

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import Event, pack_data
from streamcli.client.notifications import Notification
from streamcli.ui import records
from streamcli.ui.records import SUMMARY_CHARS


def event_line(event: pb.UserEvent) -> Text:
    return records.event_line(Event(event))


def notification_line(note: pb.Notification) -> Text:
    return records.notification_line(Notification.from_message(note))


def test_event_line_shows_time_id_user_type_and_data() -> None:
    event = pb.UserEvent(id=7, user_id="alice", type=pb.USER_EVENT_TYPE_LOGIN)
    event.timestamp.FromNanoseconds(1_764_000_000_987_654_321)  # 2025-11-24 16:00:00.987654321 UTC
    event.data.CopyFrom(pack_data({"ip": "10.0.0.1"}))  # one key: a Struct's key order is its map's
    line = event_line(event)
    assert line.plain == '2025-11-24 16:00:00.987  #7      alice        login           {"ip":"10.0.0.1"}'
    assert any(span.style == "green" for span in line.spans)  # the type's colour


def test_event_line_without_data_and_with_long_data() -> None:
    bare = pb.UserEvent(id=1, user_id="bob", type=pb.USER_EVENT_TYPE_LOGOUT)
    bare.timestamp.FromNanoseconds(1_764_000_001_000_000_000)
    assert event_line(bare).plain.endswith("logout          ")
    long = pb.UserEvent(id=2, user_id="bob", type=pb.USER_EVENT_TYPE_LOGOUT)
    long.data.CopyFrom(pack_data({"text": "x" * 500}))
    summary = event_line(long).plain.split("logout          ", 1)[1]
    assert len(summary) == SUMMARY_CHARS and summary.endswith("…")


def test_notification_line() -> None:
    note = pb.Notification(id=3, recipient="alice", topic="files", title="upload completed", body="a.bin",
                           severity=pb.NOTIFICATION_SEVERITY_WARNING)  # fmt: skip
    note.timestamp.FromNanoseconds(1_764_000_000_000_000_000)
    assert notification_line(note).plain == (
        "2025-11-24 16:00:00.000  #3      warning files      → alice      upload completed: a.bin"
    )


def test_what_publishers_send_is_shown_escaped_never_obeyed() -> None:
    # ESC sequences (retitle, clear screen, colour), a carriage return, a newline, a C1 CSI and a
    # right-to-left override: each would act on the terminal or split the record's line.
    hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\rOVER\nWRITE\x9b\u202e"
    event = pb.UserEvent(id=1, user_id="mal\x1b[31mlory", type=pb.USER_EVENT_TYPE_LOGIN)
    event.data.CopyFrom(pack_data({"note": "\x9b\x7f"}))
    note = pb.Notification(id=2, recipient="al\nice", topic="t\x1bx", title=hostile, body=hostile)
    for line in (event_line(event).plain, notification_line(note).plain):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in line), repr(line)
    assert "mal\\x1b[31mlory" in event_line(event).plain
    assert "\\x9b\\x7f" in event_line(event).plain
    shown = notification_line(note).plain
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\rOVER\\nWRITE\\x9b\\u202e" in shown
    assert "al\\nice" in shown and "t\\x1bx" in shown


def test_ordinary_text_is_shown_as_it_is() -> None:
    event = pb.UserEvent(id=1, user_id="zoë 日本", type=pb.USER_EVENT_TYPE_LOGIN)
    event.data.CopyFrom(pack_data({"city": "Zürich", "tab": "a\tb"}))  # JSON escapes the tab itself
    plain = event_line(event).plain
    assert "zoë 日本" in plain and "Zürich" in plain and '"a\\tb"' in plain


def test_a_time_rfc_3339_cannot_write_is_shown_as_invalid_not_a_crash() -> None:
    import json

    # The server refuses such times on publish; another server implementing the contract may send them.
    for seconds, nanos in ((10**15, 0), (-(10**15), 0), (0, -1), (0, 2_000_000_000)):
        event = pb.UserEvent(id=1, user_id="x", type=pb.USER_EVENT_TYPE_LOGIN)
        event.timestamp.seconds, event.timestamp.nanos = seconds, nanos
        shown = f"invalid time ({seconds} s, {nanos} ns)"
        assert event_line(event).plain.startswith(shown + "  #1")
        assert json.loads(Event(event).json_line())["timestamp"] == shown


def test_chat_lines_show_what_another_server_sent_and_obey_none_of_it() -> None:
    from streamcli.cli.chat import message_line
    from streamcli.client.chat_records import message_from_pb
    from streamcli.ui.chat import message_text

    sent = pb.ChatMessage(
        id=4,
        user_id="mal\x1b]0;x\x07lory",
        room_id="r",
        content="two\nlines \x1b[2J\u202e",
        type=pb.CHAT_MESSAGE_TYPE_TEXT,
    )
    sent.timestamp.seconds = 10**15  # no RFC 3339 text can hold it
    message = message_from_pb(sent)
    shown = "".join(text for _, text in message_text(message))
    assert shown.startswith("invalid time (1000000000000000 s, 0 ns) <mal\\x1b]0;x\\x07lory> ")
    assert shown.endswith("two\nlines \\x1b[2J\\u202e")  # a message's own lines stay lines in the REPL
    assert message_line(message) == (
        "invalid time (1000000000000000 s, 0 ns) <mal\\x1b]0;x\\x07lory> two\\nlines \\x1b[2J\\u202e\n"
    )  # line mode: one line per message
