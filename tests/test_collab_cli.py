"""``streamcli collab`` against the real server: --apply (files, stdin, code points, concurrent runs), --print,
ls, refused edits by line, and what it says without a mode."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
from collections.abc import Iterator

import pytest

from streamcli.errors import ExitStatus
from tests.support.inprocess import cli
from tests.support.threaded import threaded_server


@pytest.fixture
def address(tmp_path: pathlib.Path) -> Iterator[str]:
    with threaded_server(tmp_path / "data") as served:
        yield served


def ndjson(*edits: dict[str, object]) -> str:
    return "".join(json.dumps(edit) + "\n" for edit in edits)


def test_apply_prints_the_revision_and_print_shows_the_text(address: str, tmp_path: pathlib.Path) -> None:
    edits = tmp_path / "edits.ndjson"
    # "😀字" then "e" + combining acute between them: positions are code points.
    edits.write_text(ndjson({"position": 0, "insert_text": "😀字"}, {"position": 1, "insert_text": "e\u0301"}))
    run = cli(address, "collab", "notes", "--apply", str(edits), "--user", "alice")
    assert (run.code, run.out) == (0, "1\n")  # one change: one revision
    run = cli(address, "collab", "notes", "--apply", "-", stdin=ndjson({"position": 4, "delete_count": 0}, {}))
    assert run.code == ExitStatus.USAGE  # {} has no position
    assert "line 2" in run.err
    run = cli(address, "collab", "notes", "--apply", "-", stdin=ndjson({"position": 1, "delete_count": 2}))
    assert (run.code, run.out) == (0, "2\n")
    printed = cli(address, "collab", "notes", "--print")
    assert (printed.code, printed.out) == (0, "😀字\n")
    as_json = cli(address, "--json", "collab", "notes", "--print")
    assert json.loads(as_json.out) == {"document": "notes", "revision": 2, "text": "😀字"}


def test_concurrent_runs_all_land_once(address: str) -> None:
    cli(address, "collab", "shared", "--apply", "-", stdin=ndjson({"position": 0, "insert_text": "[]"}))
    words = [f"w{n}" for n in range(6)]

    def insert(word: str) -> int:
        # Each inserts between the brackets of revision 1 as it sees the text on joining.
        return cli(address, "collab", "shared", "--apply", "-", stdin=ndjson({"position": 1, "insert_text": word})).code

    with concurrent.futures.ThreadPoolExecutor(len(words)) as pool:
        assert list(pool.map(insert, words)) == [0] * len(words)
    text = json.loads(cli(address, "--json", "collab", "shared", "--print").out)
    assert text["revision"] == 1 + len(words)
    inside = text["text"]
    assert inside.startswith("[") and inside.endswith("]")
    assert sorted(inside[1:-1].replace("w", " w").split()) == sorted(words)


def test_an_edit_that_does_not_fit_is_named_by_its_line_and_nothing_is_applied(address: str) -> None:
    run = cli(
        address, "collab", "doc", "--apply", "-",
        stdin=ndjson({"position": 0, "insert_text": "ab"}, {"position": 3, "delete_count": 1}),
    )  # fmt: skip
    assert run.code == ExitStatus.INVALID_ARGUMENT
    assert "line 2" in run.err and "outside a document of 2" in run.err
    assert cli(address, "--json", "collab", "ls").out == ""  # nothing was committed


def test_control_characters_are_refused_by_the_server(address: str) -> None:
    run = cli(address, "collab", "doc", "--apply", "-", stdin=ndjson({"position": 0, "insert_text": "\x1b[2J"}))
    assert run.code == ExitStatus.INVALID_ARGUMENT
    assert "control characters" in run.err


def test_ls_lists_documents_by_id_with_their_revisions(address: str) -> None:
    for document, count in (("b", 2), ("a", 1)):
        for _ in range(count):
            assert (
                cli(address, "collab", document, "--apply", "-", stdin=ndjson({"position": 0, "insert_text": "x"})).code
                == 0
            )
    rows = [json.loads(line) for line in cli(address, "--json", "collab", "ls").out.splitlines()]
    assert [(r["document"], r["revision"]) for r in rows] == [("a", 1), ("b", 2)]
    table = cli(address, "collab", "ls").out.splitlines()
    assert [line.split("\t")[:2] for line in table] == [["a", "1"], ["b", "2"]]


def test_the_editor_needs_a_terminal(address: str) -> None:
    run = cli(address, "collab", "notes")
    assert run.code == ExitStatus.USAGE
    assert "the editor needs a terminal" in run.err and "--print or --apply" in run.err
    both = cli(address, "collab", "notes", "--print", "--apply", "-", stdin="")
    assert both.code == ExitStatus.USAGE
