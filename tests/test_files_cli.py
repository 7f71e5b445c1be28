"""``streamcli files`` and the result lines of transfers: server text on the user's terminal; ``files rm``.

What a server supplies (names, ids, content types, error details) is shown with
control and bidirectional characters escaped in every human-readable line;
``--json`` keeps it exact. A foreign server (``tests.support.foreign``) sends
what ``streamcli serve`` would refuse.
"""

from __future__ import annotations

import json
import pathlib

from streamcli.errors import ExitStatus
from tests.support.foreign import foreign_file, foreign_server
from tests.support.inprocess import cli

RETITLE = "\x1b]0;PWNED\x07\x1b[2Jevil.txt"  # sets the window title, then clears the screen
SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2Jevil.txt"
REVERSED = "invoice\u202etxt.exe"  # shown as "invoiceexe.txt" by a terminal that obeys the override
MARKUP = "[bold red]not markup[/]"

FILES = (
    foreign_file("f1", RETITLE, b"one", content_type="text/\x1b[31mplain"),
    foreign_file("id\u2066x", REVERSED, b"two"),
    foreign_file("f3", MARKUP, b"three"),
)


def assert_no_controls(text: str) -> None:
    for character in ("\x1b", "\x07", "\u202e", "\u2066"):
        assert character not in text


def test_files_ls_escapes_what_the_server_sent_and_json_keeps_it() -> None:
    with foreign_server(*FILES) as address:
        table = cli(address, "files", "ls")
        as_json = cli(address, "--json", "files", "ls")
    assert table.code == 0, table.err
    assert_no_controls(table.out)
    assert SHOWN in table.out
    assert "invoice\\u202etxt.exe" in table.out and "id\\u2066x" in table.out
    assert MARKUP in table.out  # shown as typed, not read as rich markup
    assert as_json.code == 0, as_json.err
    records = [json.loads(line) for line in as_json.out.splitlines()]
    assert [(r["id"], r["name"]) for r in records] == [("f1", RETITLE), ("id\u2066x", REVERSED), ("f3", MARKUP)]
    assert records[0]["content_type"] == "text/\x1b[31mplain"


def test_files_info_escapes_every_field() -> None:
    with foreign_server(*FILES) as address:
        info = cli(address, "files", "info", "f1")
        as_json = cli(address, "--json", "files", "info", "f1")
    assert info.code == 0, info.err
    assert_no_controls(info.out)
    assert f"name:         {SHOWN}\n" in info.out
    assert "content_type: text/\\x1b[31mplain\n" in info.out
    assert json.loads(as_json.out)["name"] == RETITLE


def test_the_download_result_line_escapes_the_name(tmp_path: pathlib.Path) -> None:
    with foreign_server(*FILES) as address:
        run = cli(address, "download", "id\u2066x", "-o", f"{tmp_path}/")
        as_json = cli(address, "--json", "download", "id\u2066x", "-o", f"{tmp_path}/again/", "--create-dirs")
    assert run.code == 0, run.err
    assert run.out == f"{tmp_path}/invoice\\u202etxt.exe\n"  # a valid name, kept on disk as sent
    assert (tmp_path / REVERSED).read_bytes() == b"two"
    assert json.loads(as_json.out)["path"] == f"{tmp_path}/again/{REVERSED}"


def test_an_error_quoting_the_server_is_escaped() -> None:
    with foreign_server(*FILES) as address:
        run = cli(address, "files", "info", "\x1b[2Jgone")
    assert run.code == ExitStatus.NOT_FOUND
    assert run.err == "streamcli: error: no file \\x1b[2Jgone\n"


# --- files rm --------------------------------------------------------------------------------


def test_rm_goes_on_after_a_missing_id_and_exits_with_the_first_failure(tmp_path: pathlib.Path) -> None:
    from tests.support.threaded import threaded_server

    sources = []
    for n in range(2):
        sources.append(tmp_path / f"keep{n}.txt")
        sources[-1].write_text(f"file {n}\n")
    with threaded_server(tmp_path / "data") as address:
        up = cli(address, "--json", "upload", *map(str, sources))
        assert up.code == 0, up.err
        first, second = (json.loads(line)["id"] for line in up.out.splitlines())
        removed = cli(address, "files", "rm", "nosuch", first, "nosuch2", second)
        left = cli(address, "--json", "files", "ls")
    assert removed.code == ExitStatus.NOT_FOUND
    assert removed.out == f"deleted {first}\ndeleted {second}\n"
    assert removed.err == "streamcli: error: no file 'nosuch'\nstreamcli: error: no file 'nosuch2'\n"
    assert left.out == ""


def test_rm_stops_when_the_server_cannot_be_reached() -> None:
    run = cli("127.0.0.1:1", "files", "rm", "a", "b", "c")
    assert run.code == ExitStatus.UNAVAILABLE
    assert len(run.error_lines) == 1
    assert run.error_lines[0].startswith("streamcli: error: cannot reach the server at 127.0.0.1:1")
    assert run.error_lines[0].endswith("(stopped: 2 more not deleted)")
