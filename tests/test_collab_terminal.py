"""``streamcli collab DOC``: the full-screen editor as a real process in a real terminal (tmux), edited by a
scripted second client at the same time; and the diff that turns what was typed into an edit."""

from __future__ import annotations

import json
import pathlib
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from streamcli.ui.collab import typed_edit
from tests.support.inprocess import cli
from tests.support.servers import serve_process
from tests.support.terminal import Tmux


def editor(address: str, user: str) -> list[str]:
    return [sys.executable, "-m", "streamcli", "--address", address, "collab", "doc", "--user", user]


def test_a_remote_edit_appears_and_the_local_cursor_stays_on_its_character(tmux: Tmux, tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        tmux.start("alice", editor(served.address, "alice"))
        tmux.wait_for("alice", "connected")
        tmux.run("send-keys", "-t", "alice", "-l", "abc字def")
        tmux.wait_for("alice", "abc字def")
        tmux.run("send-keys", "-t", "alice", "Left", "Left", "Left")  # the cursor before "d"
        # A scripted second client inserts at the start of the document.
        edit = json.dumps({"position": 0, "insert_text": "😀XY "})
        assert cli(served.address, "collab", "doc", "--apply", "-", "--user", "bob", stdin=edit + "\n").code == 0
        tmux.wait_for("alice", "😀XY abc字def")
        tmux.run("send-keys", "-t", "alice", "-l", "!")  # typed where the cursor was: before "d"
        tmux.wait_for("alice", "😀XY abc字!def")
        printed = cli(served.address, "collab", "doc", "--print")
        for _ in range(50):  # the editor sends what was typed; the server has it soon
            if printed.out == "😀XY abc字!def\n":
                break
            printed = cli(served.address, "collab", "doc", "--print")
        assert printed.out == "😀XY abc字!def\n"


def test_other_editors_are_named_while_they_are_there_and_ctrl_q_leaves(tmux: Tmux, tmp_path: pathlib.Path) -> None:
    with serve_process(tmp_path) as served:
        tmux.start("alice", editor(served.address, "alice"))
        tmux.wait_for("alice", "alone")
        tmux.start("bob", editor(served.address, "bob"))
        tmux.wait_for("bob", "with alice")  # told who is here on joining
        tmux.wait_for("alice", "with bob")  # told who came
        tmux.run("send-keys", "-t", "bob", "-l", "hi")
        tmux.wait_for("alice", "hi")
        tmux.run("send-keys", "-t", "bob", "C-q")
        tmux.wait_for_exit("bob")
        tmux.wait_for("alice", "alone")  # told who left
        tmux.run("send-keys", "-t", "alice", "C-q")
        tmux.wait_for_exit("alice")


@settings(derandomize=True, database=None, max_examples=200, deadline=None)
@given(st.text(st.sampled_from("ab😀字\u0301\n"), max_size=8), st.text(st.sampled_from("ab😀字\u0301\n"), max_size=8))
def test_what_was_typed_is_one_edit_from_the_text_before(before: str, after: str) -> None:
    edit = typed_edit(before, after)
    assert edit.apply(before) == after
    assert edit.delete_count <= len(before) and len(edit.insert_text) <= len(after)
