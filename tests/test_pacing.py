"""Transfers yield to interactive calls: the AIMD of the rate as plain logic, and the pacer in a real server.

The server tests give the pacer a fixed rate (floor = ceiling) so that what they check does not depend on how
late the loop of a busy test machine runs: whether the pacer is engaged, that chunks go through it (its
counters, read on the running server), that bytes arrive whole, that a cancelled transfer leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import pathlib
from collections.abc import AsyncIterator, Callable

import pytest

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.progress import NullProgress
from streamcli.client.transfer import CHUNK_SIZE, download_file, upload_path
from streamcli.errors import ExitStatus
from streamcli.server.app import RunningServer
from streamcli.services.files import DOWNLOAD_CHUNK_SIZE
from streamcli.services.pacing import MiB, PacingSettings, RateControl
from tests.support.chat import RawChat
from tests.support.files import write_random
from tests.support.inprocess import cli
from tests.support.servers import client, running_server

#: A bound on waits that only expire when the behaviour under test is broken.
PATIENCE = 30.0

SETTINGS = PacingSettings(lag_target=0.010, floor=4 * MiB, ceiling=64 * MiB, growth=8 * MiB, hold=0.1)


# --- the rate's AIMD, as plain logic ------------------------------------------------------------------------------


def _at_the_ceiling() -> RateControl:
    """A control out of slow start at the ceiling (doubled from the floor, then one cut and growth back)."""
    control = RateControl(SETTINGS)
    control.observe(0.011, now=0.0)  # (slow start over, at the floor)
    control.observe(0.0, now=1.0)
    control.observe(0.0, now=1000.0)
    assert control.rate == 64 * MiB
    return control


def test_slow_start_doubles_from_the_floor_once_per_hold_until_a_lag_over_the_target() -> None:
    control = RateControl(SETTINGS)
    assert control.rate == 4 * MiB and control.slow_start  # it starts at the floor
    assert control.observe(0.001, now=1.0) == 8 * MiB
    assert control.observe(0.001, now=1.0625) == 8 * MiB  # within the hold
    assert control.observe(0.007, now=1.25) == 8 * MiB  # between half the target and the target: it stays
    assert control.observe(0.001, now=1.25) == 16 * MiB
    assert control.observe(0.001, now=1.5, limited=False) == 16 * MiB  # a rate that limited nobody stays
    assert control.observe(0.001, now=1.75) == 32 * MiB
    assert control.observe(0.001, now=2.0) == 64 * MiB
    assert control.observe(0.001, now=2.25) == 64 * MiB  # the ceiling
    # The first lag over the target halves the rate at once (a doubling does not hold a cut back) and ends
    # slow start: growth is additive from then on.
    assert control.observe(0.011, now=2.25) == 32 * MiB and not control.slow_start
    assert control.observe(0.001, now=2.5) == 32 * MiB + 8 * MiB * 0.25


def test_a_lag_over_the_target_halves_the_rate_once_per_hold() -> None:
    control = _at_the_ceiling()
    assert control.observe(0.011, now=2000.0) == 32 * MiB
    assert control.observe(0.050, now=2000.0625) == 32 * MiB  # within the hold: the cut has not shown yet
    assert control.observe(0.050, now=2000.125) == 16 * MiB
    assert control.observe(0.010, now=2001.0) == 16 * MiB  # at the target exactly: no cut


def test_the_rate_never_goes_below_the_floor() -> None:
    control = _at_the_ceiling()
    rates = [control.observe(1.0, now=2000 + step * 0.125) for step in range(10)]
    assert rates[:4] == [32 * MiB, 16 * MiB, 8 * MiB, 4 * MiB]
    assert set(rates[4:]) == {4 * MiB}


def test_a_lag_under_half_the_target_adds_growth_for_the_time_since_the_last_sample() -> None:
    control = _at_the_ceiling()
    for step in range(5):
        control.observe(1.0, now=2000 + step * 0.125)  # down to the floor
    assert control.rate == 4 * MiB
    assert control.observe(0.001, now=2001.0) == 4 * MiB + 8 * MiB * 0.5
    assert control.observe(0.004, now=2001.5) == 4 * MiB + 8 * MiB * 1.0
    # Between half the target and the target, the rate stays.
    assert control.observe(0.007, now=2002.5) == 4 * MiB + 8 * MiB * 1.0
    # A rate that limited nobody does not grow.
    assert control.observe(0.001, now=2003.5, limited=False) == 4 * MiB + 8 * MiB * 1.0
    assert control.observe(0.001, now=3000.0) == 64 * MiB  # up to the ceiling, no further


def test_after_a_pause_the_first_sample_adds_nothing() -> None:
    control = _at_the_ceiling()
    control.observe(1.0, now=2000.0)
    control.pause()
    assert control.observe(0.0, now=2100.0) == 32 * MiB
    assert control.observe(0.0, now=2100.5) == 32 * MiB + 8 * MiB * 0.5


@pytest.mark.parametrize(
    "settings",
    [
        PacingSettings(lag_target=-0.001),
        PacingSettings(lag_target=2.0),
        PacingSettings(floor=0),
        PacingSettings(floor=2 * MiB, ceiling=MiB),
        PacingSettings(sample_interval=0),
    ],
)
def test_settings_out_of_range_are_refused(settings: PacingSettings) -> None:
    with pytest.raises(ValueError):
        settings.check()


def test_serve_refuses_a_lag_target_out_of_range(tmp_path: pathlib.Path) -> None:
    over = cli(None, "serve", "--data-dir", str(tmp_path / "data"), "--transfer-lag-target", "2s")
    garbled = cli(None, "serve", "--data-dir", str(tmp_path / "data"), "--transfer-lag-target", "soon")
    assert (over.code, over.err) == (
        ExitStatus.USAGE,
        "streamcli: error: --transfer-lag-target must be between 0 (no pacing) and 1 second\n",
    )
    assert garbled.code == ExitStatus.USAGE
    assert "'soon' is not a duration" in garbled.err


def test_serve_reads_the_lag_target_from_its_variable(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCLI_TRANSFER_LAG_TARGET", "1500ms")
    result = cli(None, "serve", "--data-dir", str(tmp_path / "data"))
    assert (result.code, result.err) == (
        ExitStatus.USAGE,
        "streamcli: error: --transfer-lag-target must be between 0 (no pacing) and 1 second\n",
    )


# --- the pacer in a real server ----------------------------------------------------------------------------------


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (the server's side of a call has caught up), at most PATIENCE."""
    async with asyncio.timeout(PATIENCE):
        while not condition():
            await asyncio.sleep(0.01)


def fixed_rate(rate: float) -> PacingSettings:
    """Pacing at ``rate`` bytes/s whenever engaged, however late the loop runs."""
    return PacingSettings(lag_target=0.005, floor=rate, ceiling=rate)


@pytest.fixture
async def paced(tmp_path: pathlib.Path) -> AsyncIterator[RunningServer]:
    async with running_server(tmp_path / "data", pacing=fixed_rate(32 * MiB)) as running:
        yield running


async def test_transfers_are_paced_while_a_chat_is_open_and_arrive_byte_exact(
    paced: RunningServer, tmp_path: pathlib.Path
) -> None:
    pacer = paced.pacer
    source = tmp_path / "source.bin"
    size = 6 * MiB + 123
    digest = write_random(source, size)
    async with client(paced.address) as conn, client(paced.address) as chatter:
        chat = await RawChat(chatter, "ops", "alice").open()
        await chat.next()  # joined: the server's handler runs
        assert (pacer.interactive_calls, pacer.engaged) == (1, False)  # no transfer yet

        uploaded = await upload_path(conn, source, NullProgress())
        paced_up = pacer.paced_chunks
        out = tmp_path / "out"
        out.mkdir()
        downloaded = await download_file(conn, uploaded.file_id, out, NullProgress())
        paced_down = pacer.paced_chunks - paced_up
        await chat.close()

    assert (uploaded.size, uploaded.sha256) == (size, digest)
    assert hashlib.sha256((out / "source.bin").read_bytes()).hexdigest() == digest == downloaded.sha256
    # Every chunk went through the pacer.
    assert (paced_up, paced_down) == (math.ceil(size / CHUNK_SIZE), math.ceil(size / DOWNLOAD_CHUNK_SIZE))


async def test_a_tail_engages_pacing_too_and_it_disengages_once_the_tail_ends(
    paced: RunningServer, tmp_path: pathlib.Path
) -> None:
    pacer = paced.pacer
    source = tmp_path / "source.bin"
    digest = write_random(source, 3 * MiB)
    async with client(paced.address) as conn:
        tail = conn.stub.StreamUserEvents(pb.StreamUserEventsRequest(user_id="alice"), metadata=conn.metadata)
        await until(lambda: pacer.interactive_calls == 1)
        await upload_path(conn, source, NullProgress())
        assert pacer.paced_chunks >= 3
        assert (pacer.transfers, pacer.engaged) == (0, False)  # the upload ended: nothing to pace

        tail.cancel()
        await until(lambda: pacer.interactive_calls == 0)
        before = pacer.paced_chunks
        again = await upload_path(conn, source, NullProgress())

    assert again.sha256 == digest
    assert pacer.paced_chunks == before  # no interactive call open: not paced
    assert (pacer.engaged, pacer.waiting) == (False, 0)


async def test_a_transfer_cancelled_while_it_waits_in_the_pacer_leaves_cleanly(tmp_path: pathlib.Path) -> None:
    content = bytes(range(256)) * (3 * MiB // 256)
    checksum = hashlib.sha256(content).hexdigest()
    partial = tmp_path / "data" / "blobs" / "partial" / "waits"
    # A chunk a minute: the second chunk waits (the first takes what the full bucket holds).
    async with running_server(tmp_path / "data", pacing=fixed_rate(MiB / 60)) as server:
        pacer = server.pacer
        async with client(server.address) as conn, client(server.address) as chatter:
            chat = await RawChat(chatter, "ops", "alice").open()
            await chat.next()
            call = conn.stub.UploadFile(metadata=conn.metadata)
            meta = pb.FileMetadata(filename="a.bin", total_size=len(content), checksum=checksum)
            await call.write(pb.UploadFileRequest(metadata=meta, upload_id="waits"))
            for start in range(0, len(content), MiB):
                await call.write(pb.UploadFileRequest(chunk=content[start : start + MiB]))
            await until(lambda: pacer.waiting == 1 and partial.exists() and partial.stat().st_size == MiB)

            call.cancel()
            await until(lambda: pacer.transfers == 0)
            assert (pacer.waiting, pacer.engaged) == (0, False)
            await chat.close()
            await until(lambda: pacer.interactive_calls == 0)

            # The upload was let go (its claim too): it resumes, unpaced, from what was written.
            status = await conn.stub.GetUploadStatus(pb.GetUploadStatusRequest(upload_id="waits"))
            offset = status.committed_offset
            assert offset == MiB  # the chunk admitted before the wait; not the one that waited
            rest = [
                pb.UploadFileRequest(chunk=content[start : start + MiB]) for start in range(offset, len(content), MiB)
            ]
            resume = pb.UploadFileRequest(resume=pb.UploadResume(upload_id="waits", offset=offset))
            response = await conn.stub.UploadFile(iter([resume, *rest]), metadata=conn.metadata, timeout=PATIENCE)

    assert (response.bytes_uploaded, response.checksum) == (len(content), checksum)
    assert pacer.paced_chunks == 2  # the first chunk, and the one cancelled while it waited


async def test_a_server_that_does_not_pace_does_not_count_calls(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "source.bin"
    write_random(source, 2 * MiB)
    async with (
        running_server(tmp_path / "data", pacing=PacingSettings(lag_target=0)) as server,
        client(server.address) as conn,
        client(server.address) as chatter,
    ):
        chat = await RawChat(chatter, "ops", "alice").open()
        await chat.next()
        await upload_path(conn, source, NullProgress())
        await chat.close()
    pacer = server.pacer
    assert (pacer.interactive_calls, pacer.transfers, pacer.paced_chunks) == (0, 0, 0)
