"""``streamcli download`` and the user's disk: links, directories, names from the server, stdout.

Each case was a reported way to make ``download`` write somewhere it should not
(through a symbolic link, outside the target directory) or fail with a
traceback. The CLI runs in-process against a real server in a thread
(``tests.support.threaded``) or a foreign one sending hostile names
(``tests.support.foreign``); a subprocess only where pipes and exit codes are
under test.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from streamcli.errors import ExitStatus
from tests.support.foreign import foreign_file, foreign_server
from tests.support.inprocess import cli
from tests.support.servers import clean_env
from tests.support.threaded import threaded_server

CONTENT = b"%PDF-1.7 the report\n" * 5000  # ~100 kB: several download messages
VICTIM = b"precious data\n"


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[str, str]]:
    """A real server holding ``report.pdf``; yields (address, file id)."""
    source = tmp_path / "src" / "report.pdf"
    source.parent.mkdir()
    source.write_bytes(CONTENT)
    with threaded_server(tmp_path / "data") as address:
        up = cli(address, "--json", "upload", str(source))
        assert up.code == 0, up.err
        yield address, json.loads(up.out)["id"]


@pytest.fixture
def work(tmp_path: pathlib.Path) -> pathlib.Path:
    """An empty directory to download into, next to a victim file outside it."""
    (tmp_path / "victim.txt").write_bytes(VICTIM)
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def assert_victim_intact(work: pathlib.Path) -> None:
    assert (work.parent / "victim.txt").read_bytes() == VICTIM


# --- links and special files at NAME.part and NAME ----------------------------------------


@pytest.mark.parametrize("resume", ["--resume", "--no-resume"])
def test_a_symlink_at_the_part_file_is_refused_not_followed(
    served: tuple[str, str], work: pathlib.Path, resume: str
) -> None:
    address, file_id = served
    (work / "report.pdf.part").symlink_to("../victim.txt")
    run = cli(address, "download", file_id, "-o", f"{work}/", resume)
    assert run.code == ExitStatus.LOCAL_CONFLICT
    assert run.error_lines == [
        f"streamcli: error: {work}/report.pdf.part is a symbolic link; not following it (remove it and try again)"
    ]
    assert_victim_intact(work)
    assert (work / "report.pdf.part").is_symlink()
    assert not (work / "report.pdf").exists() and not (work / "report.pdf").is_symlink()


def test_a_hard_link_at_the_part_file_is_refused(served: tuple[str, str], work: pathlib.Path) -> None:
    address, file_id = served
    os.link(work.parent / "victim.txt", work / "report.pdf.part")
    run = cli(address, "download", file_id, "-o", f"{work}/")
    assert run.code == ExitStatus.LOCAL_CONFLICT
    assert run.error_lines == [
        f"streamcli: error: {work}/report.pdf.part has other links (2);"
        " not writing through them (remove it and try again)"
    ]
    assert_victim_intact(work)


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_part_file_that_is_not_a_regular_file_is_refused(
    served: tuple[str, str], work: pathlib.Path, kind: str
) -> None:
    address, file_id = served
    part = work / "report.pdf.part"
    os.mkfifo(part) if kind == "fifo" else part.mkdir()
    run = cli(address, "download", file_id, "-o", f"{work}/", "--no-resume")  # opening a FIFO must not block
    assert run.code == ExitStatus.LOCAL_CONFLICT
    assert run.error_lines == [f"streamcli: error: {part} is not a regular file (remove it and try again)"]
    assert not (work / "report.pdf").exists()


def test_a_symlink_at_the_target_is_kept_unless_forced_then_replaced_itself(
    served: tuple[str, str], work: pathlib.Path
) -> None:
    address, file_id = served
    target = work / "report.pdf"
    target.symlink_to("../victim.txt")
    refused = cli(address, "download", file_id, "-o", str(target))
    assert refused.code == ExitStatus.LOCAL_CONFLICT
    assert refused.error_lines == [f"streamcli: error: {target} exists; pass --force to overwrite it"]
    assert not (work / "report.pdf.part").exists()  # refused before downloading anything

    forced = cli(address, "download", file_id, "-o", str(target), "--force")
    assert forced.code == 0, forced.err
    assert not target.is_symlink() and target.read_bytes() == CONTENT  # the link was replaced, not written through
    assert_victim_intact(work)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_directory_at_the_target_is_never_replaced(
    served: tuple[str, str], work: pathlib.Path, force: list[str]
) -> None:
    address, file_id = served
    (work / "report.pdf").mkdir()
    (work / "report.pdf" / "inside").write_bytes(VICTIM)
    run = cli(address, "download", file_id, "-o", f"{work}/", *force)
    assert run.code == ExitStatus.LOCAL_CONFLICT
    assert run.error_lines == [f"streamcli: error: {work}/report.pdf is a directory; not replacing it"]
    assert not (work / "report.pdf.part").exists()  # checked before downloading
    assert (work / "report.pdf" / "inside").read_bytes() == VICTIM


def test_a_regular_part_file_still_resumes(served: tuple[str, str], work: pathlib.Path) -> None:
    address, file_id = served
    (work / "report.pdf.part").write_bytes(CONTENT[:1000])
    run = cli(address, "--json", "download", file_id, "-o", f"{work}/")
    assert run.code == 0, run.err
    assert json.loads(run.out)["resumed_from"] == 1000
    assert (work / "report.pdf").read_bytes() == CONTENT
    assert not (work / "report.pdf.part").exists()


# --- -o with a trailing slash, --create-dirs --------------------------------------------


@pytest.mark.parametrize("output", ["newdir/", "nodir/sub/"])
def test_a_trailing_slash_names_a_directory_that_must_exist(
    served: tuple[str, str], work: pathlib.Path, output: str
) -> None:
    address, file_id = served
    run = cli(address, "download", file_id, "-o", f"{work}/{output}")
    assert run.code == ExitStatus.USAGE
    assert run.error_lines == [
        f"streamcli: error: directory {work}/{output.rstrip('/')} does not exist (pass --create-dirs to create it)"
    ]
    assert list(work.iterdir()) == []

    created = cli(address, "download", file_id, "-o", f"{work}/{output}", "--create-dirs")
    assert created.code == 0, created.err
    assert created.out == f"{work}/{output}report.pdf\n"
    assert (work / output / "report.pdf").read_bytes() == CONTENT


def test_a_file_in_a_missing_directory(served: tuple[str, str], work: pathlib.Path) -> None:
    address, file_id = served
    run = cli(address, "download", file_id, "-o", f"{work}/a/b/copy.pdf")
    assert run.code == ExitStatus.USAGE
    assert run.error_lines == [
        f"streamcli: error: directory {work}/a/b does not exist (pass --create-dirs to create it)"
    ]
    created = cli(address, "download", file_id, "-o", f"{work}/a/b/copy.pdf", "--create-dirs")
    assert created.code == 0, created.err
    assert (work / "a" / "b" / "copy.pdf").read_bytes() == CONTENT


def test_a_trailing_slash_on_an_existing_file_is_refused(served: tuple[str, str], work: pathlib.Path) -> None:
    address, file_id = served
    (work / "plain").write_bytes(VICTIM)
    run = cli(address, "download", file_id, "-o", f"{work}/plain/", "--create-dirs")
    assert run.code == ExitStatus.USAGE
    assert run.error_lines == [f"streamcli: error: {work}/plain is not a directory"]
    assert (work / "plain").read_bytes() == VICTIM


# --- names the server supplies ---------------------------------------------------------------

HOSTILE_NAMES = ["", ".", "..", "../victim.txt", "sub/evil", "..\\evil", "a\nb", "\x1b]0;PWNED\x07evil", "x" * 300]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_name_the_server_sends_is_checked_and_the_id_used_instead(
    work: pathlib.Path, name: str, force: list[str]
) -> None:
    (work / "sub").mkdir()
    with foreign_server(foreign_file("f00d", name, CONTENT)) as address:
        run = cli(address, "download", "f00d", "-o", f"{work}/sub", *force)
    assert run.code == 0, run.err
    assert run.out == f"{work}/sub/f00d\n"
    assert sorted(p.name for p in work.iterdir()) == ["sub"]  # nothing next to the target directory
    assert [p.name for p in (work / "sub").iterdir()] == ["f00d"]
    assert (work / "sub" / "f00d").read_bytes() == CONTENT
    assert_victim_intact(work)


def test_an_id_that_is_no_file_name_either_asks_for_a_path(work: pathlib.Path) -> None:
    with foreign_server(foreign_file("../x", "..", CONTENT)) as address:
        run = cli(address, "download", "../x", "-o", f"{work}/")
    assert run.code == ExitStatus.USAGE
    assert run.error_lines == [
        "streamcli: error: the server's name for '../x' is not a usable file name: '..' is not a file name;"
        " name the file with -o PATH"
    ]
    assert list(work.iterdir()) == []


# --- standard output ---------------------------------------------------------------------------


def test_binary_output_to_a_terminal_is_refused_unless_forced(served: tuple[str, str]) -> None:
    address, file_id = served
    leader, follower = os.openpty()
    with open(follower, "w", closefd=True) as terminal:
        run = cli(address, "download", file_id, "-o", "-", stdout=terminal)  # type: ignore[arg-type]
        assert run.code == ExitStatus.USAGE
        assert run.error_lines == [
            "streamcli: error: binary output can mess up your terminal;"
            " pipe it, use -o FILE, or pass --force to write it anyway"
        ]
        os.set_blocking(leader, False)
        with pytest.raises(BlockingIOError):
            os.read(leader, 1)  # nothing reached the terminal
    os.close(leader)


def test_forced_or_piped_output_is_written(served: tuple[str, str]) -> None:
    address, file_id = served
    sink = io.TextIOWrapper(io.BytesIO())
    run = cli(address, "download", file_id, "-o", "-", "--force", stdout=sink)
    sink.flush()
    assert run.code == 0, run.err
    assert sink.buffer.getvalue() == CONTENT  # type: ignore[attr-defined]


def _download_to_stdout(address: str, file_id: str, shell_tail: str) -> subprocess.CompletedProcess[str]:
    # A process: a reader that goes away (141) and what Python flushes to a full stdout at exit ("Exception
    # ignored ...") are process behaviour, which an in-process run cannot show.
    command = f"'{sys.executable}' -m streamcli --address {address} download {file_id} -o - {shell_tail}"
    # bash reports the first command's status of the pipeline through PIPESTATUS.
    return subprocess.run(
        ["bash", "-c", f'{command}; echo "status=${{PIPESTATUS[0]}}" >&2'],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )


def test_a_closed_pipe_exits_141_quietly(served: tuple[str, str], tmp_path: pathlib.Path) -> None:
    address, _ = served
    big = tmp_path / "big.bin"
    big.write_bytes(CONTENT * 80)  # 8 MB: far more than a pipe holds, so writing outlives `head`
    up = cli(address, "--json", "upload", str(big))
    assert up.code == 0, up.err
    file_id = json.loads(up.out)["id"]
    result = _download_to_stdout(address, file_id, "| head -c 100 >/dev/null")
    assert result.stderr == "status=141\n"


def test_a_full_stdout_exits_8_with_one_line(served: tuple[str, str]) -> None:
    address, file_id = served
    result = _download_to_stdout(address, file_id, ">/dev/full")
    assert result.stderr == ("streamcli: error: cannot write the download: No space left on device\nstatus=8\n")


def test_output_to_a_non_terminal_needs_no_force(served: tuple[str, str]) -> None:
    address, file_id = served
    sink = io.TextIOWrapper(io.BytesIO())
    run = cli(address, "download", file_id, "-o", "-", stdout=sink)
    sink.flush()
    assert run.code == 0, run.err
    assert sink.buffer.getvalue() == CONTENT  # type: ignore[attr-defined]
