"""``streamcli chat``: REPLs as real processes in real terminals (tmux), and line mode for scripts (in-process)."""

from __future__ import annotations

import json
import pathlib
import sys
import time

from tests.support.inprocess import Background, cli
from tests.support.servers import serve_process
from tests.support.terminal import Tmux
from tests.support.threaded import threaded_server


def chat_command(address: str, user: str) -> list[str]:
    return [sys.executable, "-m", "streamcli", "--address", address, "chat", "--room", "dev", "--user", user]


def test_an_incoming_message_prints_above_what_the_user_is_typing(tmux: Tmux, tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        tmux.start("alice", chat_command(served.address, "alice"))
        tmux.wait_for("alice", "alice joined")
        tmux.start("bob", chat_command(served.address, "bob"))
        tmux.wait_for("alice", "bob joined")
        tmux.run("send-keys", "-t", "alice", "-l", "half-typed draft")
        tmux.wait_for("alice", "dev> half-typed draft")
        tmux.run("send-keys", "-t", "bob", "-l", "hello from bob")
        tmux.run("send-keys", "-t", "bob", "Enter")
        # (prompt-toolkit erases the prompt, prints the message and draws the prompt again: wait for the end.)
        screen = tmux.wait_until(
            "alice",
            lambda lines: any("<bob> hello from bob" in line for line in lines) and any("dev> " in r for r in lines),
            "bob's message and the prompt",
        )
        message_row = next(i for i, line in enumerate(screen) if "<bob> hello from bob" in line)
        prompt_row = next(i for i, line in enumerate(screen) if "dev> " in line)
        assert message_row < prompt_row, "\n".join(screen)
        assert "dev> half-typed draft" in screen[prompt_row]  # the draft is intact
        # The draft was never sent: bob saw alice typing, not a message.
        assert not any("half-typed draft" in line for line in tmux.screen("bob"))
        tmux.run("send-keys", "-t", "alice", "C-u", "C-d")
        tmux.wait_for("bob", "alice left")


def test_allow_duplicate_lets_a_second_session_of_a_user_in(tmux: Tmux, tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        tmux.start("first", chat_command(served.address, "alice"))
        tmux.wait_for("first", "alice joined")
        tmux.start("second", [*chat_command(served.address, "alice"), "--allow-duplicate"])
        tmux.wait_for("second", "connected")
        deadline = time.monotonic() + 15
        while sum("-- alice joined" in line for line in tmux.screen("first")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sum("-- alice joined" in line for line in tmux.screen("first")) == 2, "\n".join(tmux.screen("first"))
        tmux.start("refused", chat_command(served.address, "alice"))
        screen = tmux.wait_for("refused", "!! cannot stay in #dev")
        assert any("alice is already in room dev in another session" in line for line in screen), "\n".join(screen)
        tmux.run("send-keys", "-t", "second", "C-d")
        tmux.wait_for("first", "alice left")


def test_line_mode_for_scripts(tmp_path: pathlib.Path) -> None:
    with (
        threaded_server(tmp_path / "data") as address,
        Background(address, "--json", "chat", "--room", "ops", "--user", "listener") as listener,
    ):
        first = json.loads(listener.stdout.readline())
        assert (first["type"], first["content"]) == ("system", "listener joined")
        bot = cli(address, "chat", "--room", "ops", "--user", "ci-bot", stdin="deploy started\ndeploy finished\n")
        assert bot.code == 0, bot.err
        seen = [json.loads(listener.stdout.readline()) for _ in range(4)]
        left = listener.communicate("", timeout=20)  # end of input: leave
    assert [(m["user_id"], m["content"]) for m in seen] == [
        ("system", "ci-bot joined"),
        ("ci-bot", "deploy started"),
        ("ci-bot", "deploy finished"),
        ("system", "ci-bot left"),
    ]
    assert left.code == 0, left.err
    assert left.out == ""  # nothing after its own leave (the room sees "listener left")
