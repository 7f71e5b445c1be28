"""``streamcli tail`` / ``events publish`` / ``notify send``.

In-process (``tests.support.inprocess``) against a real server in a thread, with a real pipe for a live
stdin; as subprocesses where a signal, a killed server or a closed pipe is under test.
"""

from __future__ import annotations

import json
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tests.support.inprocess import Background, Run, cli
from tests.support.servers import clean_env, free_port, serve_process
from tests.support.threaded import threaded_server


def publish(address: str, *lines: dict[str, object]) -> Run:
    return cli(address, "--json", "events", "publish", stdin="".join(json.dumps(x) + "\n" for x in lines))


def test_publish_then_history_as_ndjson_and_exit_0(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        published = publish(
            address,
            {"user_id": "alice", "type": "login", "data": {"ip": "10.0.0.1"}},
            {"user_id": "bob", "type": "USER_EVENT_TYPE_LOGOUT"},
            {"user_id": "alice", "type": "logout", "timestamp": "2026-11-24T10:00:00Z"},
        )
        history = cli(address, "--json", "tail", "events", "--user", "alice", "--since", "1h", "--no-follow")
        human = cli(address, "tail", "events", "--all-users", "--since", "1h", "--no-follow")
        one = cli(address, "events", "publish", "-u", "carol", "-t", "login")
        two = publish(address, *[{"user_id": "carol", "type": "logout"}] * 2)  # --json, checked above
        two_human = cli(address, "events", "publish", stdin='{"user_id":"d","type":"login"}\n' * 2)
    assert (one.out, two.code, two_human.out) == (
        "published 1 event, id 4\n",
        0,
        "published 2 events, ids 7-8\n",
    )
    assert published.code == 0, published.err
    assert json.loads(published.out) == {"count": 3, "first_id": 1, "last_id": 3}
    assert history.code == 0, history.err
    records = [json.loads(line) for line in history.out.splitlines()]
    assert [(r["id"], r["type"], r["data"]) for r in records] == [(1, "login", {"ip": "10.0.0.1"}), (3, "logout", None)]
    assert records[1]["timestamp"] == "2026-11-24T10:00:00Z"
    assert set(records[0]) == {"id", "user_id", "type", "timestamp", "data"}
    assert human.code == 0 and len(human.out.splitlines()) == 3
    assert "bob" in human.out and "logout" in human.out


def test_max_and_idle_timeout_end_with_exit_0(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        publish(address, *({"user_id": "a", "type": "login"} for _ in range(5)))
        limited = cli(address, "--json", "tail", "events", "-u", "a", "--since", "1h", "--max", "2")
        # Without the idle timeout this tail would wait for ever (pytest's timeout would fail the test).
        idle = cli(address, "tail", "events", "-u", "nobody", "--idle-timeout", "0.5")
    assert limited.code == 0 and [json.loads(x)["id"] for x in limited.out.splitlines()] == [1, 2]
    assert idle.code == 0 and idle.out == ""


def test_tail_resumes_across_a_server_restart_without_gap_or_duplicate(tmp_path: pathlib.Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with serve_process(tmp_path, address=address) as served:
        publish(address, *({"user_id": "a", "type": "login"} for _ in range(10)))
        tail = subprocess.Popen(
            [sys.executable, "-m", "streamcli", "--address", address, "--json", "tail", "events", "--all-users",
             "--since", "1h", "--max", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
        assert tail.stdout is not None
        first = [json.loads(tail.stdout.readline())["id"] for _ in range(10)]
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(10)
    with serve_process(tmp_path, address=address):
        publish(address, *({"user_id": "b", "type": "logout"} for _ in range(20)))
        out, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, err
    ids = first + [json.loads(line)["id"] for line in out.splitlines()]
    assert ids == list(range(1, 31))
    # The outage is told on stderr, once when it begins and once when the tail resumes.
    assert err.startswith("streamcli: lost the stream (UNAVAILABLE: "), err
    assert err.endswith("; reconnecting, up to 25 tries\nstreamcli: reconnected; resuming after id 10\n"), err


def test_ctrl_c_ends_a_tail_with_130(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        tail = subprocess.Popen(
            [sys.executable, "-m", "streamcli", "--address", served.address, "tail", "events", "-u", "a"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
        time.sleep(1.5)
        tail.send_signal(signal.SIGINT)
        _, err = tail.communicate(timeout=20)
    assert tail.returncode == 130
    assert err.strip() == "streamcli: error: interrupted"


def test_notify_send_and_tail_notifications(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        sent = cli(address, "--json", "notify", "send", "--to", "alice", "--topic", "deploy", "--title", "v2",
                   "--severity", "warning", "--attr", "version=2")  # fmt: skip
        bad = cli(address, "notify", "send", "--to", "alice", "--topic", "t", "--title", "x", "--severity", "loud")
        shown = cli(address, "--json", "tail", "notifications", "--user", "alice", "--since", "1h", "--no-follow")
    assert sent.code == 0, sent.err
    assert json.loads(sent.out)["severity"] == "warning"
    assert bad.code == 2 and "unknown severity 'loud'" in bad.err
    [record] = [json.loads(line) for line in shown.out.splitlines()]
    assert (record["title"], record["attributes"]) == ("v2", {"version": "2"})


def test_a_bad_line_on_stdin_is_reported_with_what_was_published(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        result = cli(
            address, "events", "publish", stdin='{"user_id": "a", "type": "login"}\n{"user_id": "a", "type": "nope"}\n'
        )
    assert result.code == 2
    assert result.err.strip() == (
        "streamcli: error: stdin line 2: unknown event type 'nope'; one of: login, logout, profile_update, "
        "password_change; the 1 event(s) before it were published (ids 1-1)"
    )


def stored_events(address: str) -> list[dict[str, Any]]:
    history = cli(address, "--json", "tail", "events", "--all-users", "--since", "1h", "--no-follow")
    return [json.loads(line) for line in history.out.splitlines()]


def wait_for_ids(address: str, count: int) -> list[int]:
    """The ids stored, once they are 1..count (or after 20 s)."""
    deadline = time.monotonic() + 20
    while (found := [e["id"] for e in stored_events(address)]) != list(range(1, count + 1)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return found


def test_publish_sends_each_line_of_a_live_pipe_at_once(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address, Background(address, "--json", "events", "publish") as publisher:
        for n in (1, 2):  # one line at a time, stdin kept open: each is published before the next is written
            publisher.write(json.dumps({"user_id": "live", "type": "login", "data": {"n": n}}) + "\n")
            assert wait_for_ids(address, n) == list(range(1, n + 1))
        result = publisher.communicate(timeout=30)  # closes stdin: the end of the input
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"count": 2, "first_id": 1, "last_id": 2}


def test_publish_lingers_for_more_lines_and_sends_them_in_one_message(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        with Background(address, "--json", "events", "publish", "--linger", "1") as publisher:

            def write(n: int) -> None:
                publisher.write(json.dumps({"user_id": "live", "type": "login", "data": {"n": n}}) + "\n")

            write(0)
            assert wait_for_ids(address, 1) == [1]  # the publisher is up and has sent the first line
            for n in range(1, 6):  # then five lines 20 ms apart: within one --linger
                write(n)
                time.sleep(0.02)
            result = publisher.communicate(timeout=30)
        events = stored_events(address)
    assert result.code == 0, result.err
    assert json.loads(result.out) == {"count": 6, "first_id": 1, "last_id": 6}
    # Events sent without a time get the server's time of the message they came in.
    stamps = [event["timestamp"] for event in events]
    assert len(set(stamps[1:])) == 1 and stamps[1] > stamps[0]


def test_publish_does_not_linger_past_the_end_of_the_input(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        lines = "".join(json.dumps({"user_id": "a", "type": "login"}) + "\n" for _ in range(3))
        start = time.monotonic()
        result = cli(address, "--json", "events", "publish", "--linger", "20", stdin=lines)
        took = time.monotonic() - start
    assert result.code == 0, result.err
    assert json.loads(result.out)["count"] == 3
    assert took < 10


def test_publish_reads_odd_input_line_by_line(tmp_path: pathlib.Path) -> None:
    lines = [
        json.dumps({"user_id": "a", "type": "login", "data": {"text": "line\u2028separator é"}}, ensure_ascii=False),
        "",  # blank lines are skipped
        json.dumps({"user_id": "b", "type": "logout"}),  # and the last line has no newline
    ]
    with threaded_server(tmp_path / "data") as address:
        published = cli(address, "--json", "events", "publish", stdin="\n".join(lines))
        history = cli(address, "--json", "tail", "events", "--all-users", "--since", "1h", "--no-follow")
        bad = cli(address, "events", "publish", stdin=b'{"user_id": "c", "type": "login"}\n{"user_id": "\xff"}\n')
    assert published.code == 0, published.err
    assert json.loads(published.out)["count"] == 2
    records = [json.loads(line) for line in history.out.split("\n") if line]  # not splitlines(): U+2028
    assert [r["data"] for r in records] == [{"text": "line\u2028separator é"}, None]
    assert bad.code == 2
    assert bad.err.strip() == (
        "streamcli: error: stdin line 2: not UTF-8; the 1 event(s) before it were published (ids 3-3)"
    )


def test_a_reader_that_closes_the_pipe_ends_a_tail_quietly_with_141(tmp_path: pathlib.Path) -> None:
    from streamcli.errors import ExitStatus

    with serve_process(tmp_path) as served:
        # About 150 KiB of history, more than a pipe holds: the tail is still writing when the reader goes.
        published = publish(served.address, *[{"user_id": "x", "type": "login", "data": {"pad": "p" * 100}}] * 1000)
        assert published.code == 0, published.err
        tail = subprocess.Popen(
            [sys.executable, "-m", "streamcli", "--address", served.address, "tail", "events", "--user", "x",
             "--since", "1h", "--no-follow"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        )  # fmt: skip
        assert tail.stdout is not None
        first = tail.stdout.readline()
        tail.stdout.close()  # like `| head -1`
        _, err = tail.communicate(timeout=30)
    assert "#1 " in first
    # Nothing on stderr: no error line, no "Exception ignored ... BrokenPipeError" at exit.
    assert (tail.returncode, err) == (ExitStatus.BROKEN_PIPE, "")


def test_since_far_back_is_everything_and_a_bad_since_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        publish(address, {"user_id": "a", "type": "login"})
        everything = cli(address, "--json", "tail", "events", "--all-users", "--since", "99999999999d", "--no-follow")
    # Refused before connecting: no server needed.
    future = cli("127.0.0.1:1", "tail", "events", "--all-users", "--since", "2999-01-01T00:00:00Z")
    beyond = cli("127.0.0.1:1", "tail", "events", "--all-users", "--since", "0001-01-01T00:00:00+01:00")
    two_units = cli("127.0.0.1:1", "tail", "events", "--all-users", "--since", "1h30m")
    until = cli("127.0.0.1:1", "tail", "events", "--all-users", "--until", "tomorrow")
    assert everything.code == 0, everything.err
    assert [json.loads(line)["id"] for line in everything.out.splitlines()] == [1]
    assert (future.code, future.err) == (
        2,
        "streamcli: error: --since 2999-01-01T00:00:00Z is in the future\n",
    )
    assert (beyond.code, beyond.err) == (
        2,
        "streamcli: error: --since 0001-01-01T00:00:00+01:00: the time is out of range\n",
    )
    assert (two_units.code, two_units.err) == (
        2,
        "streamcli: error: --since '1h30m' is not a duration or a time: use one unit (90m, 2h, 7d) or a time like "
        "2026-11-24T10:00:00Z\n",
    )
    assert (until.code, until.err) == (
        2,
        "streamcli: error: --until 'tomorrow' is not a time like 2026-11-24T10:00:00Z\n",
    )


def _publishing(address: str, events: int, *args: str) -> subprocess.Popen[str]:
    """A live ``events publish ARGS`` that has sent ``events`` events (they are stored) and waits for more.

    A subprocess: the tests that use it interrupt it (SIGINT) or outlive a server killed under it.
    """
    publisher = subprocess.Popen(
        [sys.executable, "-m", "streamcli", "--address", address, "events", "publish", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
    )  # fmt: skip
    assert publisher.stdin is not None
    publisher.stdin.write('{"user_id": "a", "type": "login"}\n' * events)
    publisher.stdin.flush()
    deadline = time.monotonic() + 20
    while len(stored_events(address)) < events:
        assert time.monotonic() < deadline, f"fewer than {events} events stored"
        time.sleep(0.1)
    return publisher


def test_an_interrupted_publish_says_how_many_events_were_sent(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        publisher = _publishing(served.address, 3)
        publisher.send_signal(signal.SIGINT)
        _, err = publisher.communicate(timeout=20)
    assert publisher.returncode == 130
    assert err == (
        "streamcli: error: interrupted after 3 event(s) had been sent; none was acknowledged, so some of them may "
        "have been stored (see streamcli tail events --since)\n"
    )


def test_a_publish_that_loses_the_server_for_good_says_how_many_events_were_sent(tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        publisher = _publishing(served.address, 2, "--retries", "2")
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(10)
        _, err = publisher.communicate(timeout=30)  # stdin still open: the lost server ends it, after 2 retries
    assert publisher.returncode == 3
    lost, failed = err.splitlines()
    assert lost.startswith("streamcli: lost the stream (UNAVAILABLE: ") and lost.endswith(
        "; reconnecting, up to 2 tries"
    ), err
    assert failed.startswith(f"streamcli: error: cannot reach the server at {served.address}")
    assert "after 2 event(s) had been sent; none was acknowledged" in failed


def test_a_live_publish_survives_server_restarts_storing_every_line_once_in_order(tmp_path: pathlib.Path) -> None:
    address = f"127.0.0.1:{free_port()}"

    def line(n: int) -> str:
        return json.dumps({"user_id": "live", "type": "login", "data": {"n": n}}) + "\n"

    with serve_process(tmp_path, address=address) as served:
        publisher = _publishing(address, 0, "--linger", "0")
        assert publisher.stdin is not None
        publisher.stdin.write("".join(line(n) for n in range(91)))  # sent, stored, not acknowledged
        publisher.stdin.flush()
        assert wait_for_ids(address, 91) == list(range(1, 92))
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(10)
    publisher.stdin.write("".join(line(n) for n in range(91, 100)))  # while the server is down
    publisher.stdin.flush()
    with serve_process(tmp_path, address=address) as served:
        # A flood, and a kill in the middle of it: some of what is in flight is stored, some not.
        writer = threading.Thread(
            target=lambda: (
                publisher.stdin.write("".join(line(n) for n in range(100, 20_000))),
                publisher.stdin.flush(),
            )  # type: ignore[union-attr]
        )
        writer.start()
        deadline = time.monotonic() + 30
        while len(stored_events(address)) < 2_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        served.process.send_signal(signal.SIGKILL)
        served.process.wait(10)
    with serve_process(tmp_path, address=address):
        writer.join(120)  # (the publisher reads stdin only as fast as it can send: not while reconnecting)
        assert not writer.is_alive(), "the publisher did not take the input within 120 s"
        out, err = publisher.communicate(timeout=90)  # closes stdin: the end of the input
        events = stored_events(address)
    assert publisher.returncode == 0, err
    assert out == "published 20000 events, ids 1-20000\n", (out, err)
    assert [e["data"]["n"] for e in events] == list(range(20_000))
    # Each outage is told on stderr when it begins and when publishing resumes.
    notices = err.splitlines()
    assert len(notices) == 4, err
    assert all(n.startswith("streamcli: lost the stream (") for n in notices[::2]), err
    assert all(n.endswith("; reconnecting, up to 25 tries") for n in notices[::2]), err
    # (The 9 lines written during the outage were sent to the dead stream, or not yet taken from stdin.)
    resumed = r"streamcli: reconnected; the server has the first 91 event\(s\), re-sending the [09] after them"
    assert re.fullmatch(resumed, notices[1]), err
    assert notices[3].startswith("streamcli: reconnected; the server has the first "), err


def test_publish_refused_by_the_server_midway_exits_5_saying_what_was_stored(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        refused = publish(
            address,
            {"user_id": "a", "type": "login"},
            {"user_id": "b", "type": "login"},
            {"user_id": "bell\u0007", "type": "login"},  # the server refuses control characters in user ids
            {"user_id": "c", "type": "login"},
        )
        history = cli(address, "--json", "tail", "events", "--all-users", "--since", "1h", "--no-follow")
    assert refused.code == 5
    assert refused.out == ""
    assert refused.err == (
        "streamcli: error: event 2 (message 0): user_id has a control character; "
        "the first 2 events of this stream were stored (ids 1-2), none after them\n"
    )
    assert [json.loads(line)["user_id"] for line in history.out.splitlines()] == ["a", "b"]


def test_no_follow_prints_the_whole_log_and_tail_n_the_last_n(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        publish(address, *({"user_id": "a" if i % 2 else "b", "type": "login"} for i in range(10)))
        cli(address, "notify", "send", "--to", "a", "--topic", "t", "--title", "one")
        cli(address, "notify", "send", "--to", "a", "--topic", "t", "--title", "two")
        everything = cli(address, "--json", "tail", "events", "--all-users", "--no-follow")
        last = cli(address, "--json", "tail", "events", "--user", "a", "--tail", "2", "--no-follow")
        none = cli(address, "--json", "tail", "events", "--user", "a", "--tail", "0", "--no-follow")
        last_note = cli(address, "--json", "tail", "notifications", "--user", "a", "--tail", "1", "--no-follow")
        # --until: stop at the first record after it (the far past: nothing; the far future: everything).
        before = cli(address, "--json", "tail", "events", "--all-users", "--no-follow", "--until", "1971-01-01")
        until_future = cli(address, "--json", "tail", "events", "-u", "b", "--no-follow", "--until", "2999-01-01")
    assert everything.code == 0, everything.err
    assert [json.loads(line)["id"] for line in everything.out.splitlines()] == list(range(1, 11))
    assert last.code == 0, last.err
    assert [json.loads(line)["id"] for line in last.out.splitlines()] == [8, 10]
    assert (none.code, none.out) == (0, "")
    assert [json.loads(line)["title"] for line in last_note.out.splitlines()] == ["two"]
    assert (before.code, before.out) == (0, "")
    assert [json.loads(line)["id"] for line in until_future.out.splitlines()] == [1, 3, 5, 7, 9]


def test_tail_chat_reads_a_room_without_joining_it(tmp_path: pathlib.Path) -> None:
    with threaded_server(tmp_path / "data") as address:
        said = cli(address, "chat", "--room", "ops", "--user", "ci", stdin="deploy started\ndeploy done\n")
        history = cli(address, "--json", "tail", "chat", "ops", "--no-follow")
        human = cli(address, "tail", "chat", "ops", "--tail", "2", "--no-follow")
        again = cli(address, "--json", "tail", "chat", "ops", "--since", "1h", "--no-follow")
        bad = cli(address, "tail", "chat", "no room!", "--no-follow")
    assert said.code == 0, said.err
    assert history.code == 0, history.err
    messages = [json.loads(line) for line in history.out.splitlines()]
    assert [(m["user_id"], m["type"], m["content"]) for m in messages] == [
        ("system", "system", "ci joined"),
        ("ci", "text", "deploy started"),
        ("ci", "text", "deploy done"),
        ("system", "system", "ci left"),
    ]
    assert set(messages[0]) == {"id", "room_id", "user_id", "type", "content", "file_id", "timestamp"}
    lines = human.out.splitlines()
    assert human.code == 0 and len(lines) == 2
    assert "ci" in lines[0] and lines[0].endswith("deploy done") and lines[1].endswith("-- ci left")
    # Reading the room added nothing to it: no join or leave of the readers.
    assert again.out == history.out
    assert bad.code == 5 and "room_id must be" in bad.err
