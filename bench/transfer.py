"""File transfer of ``streamcli upload`` / ``download``, measured against the stack's and the disk's limits in the
same run (issue 18).

What it measures, on loopback (127.0.0.1), every server and every client in a process of its own so that the
peak RSS of each can be read (``VmHWM`` of ``/proc/PID/status``, polled every 10 ms for clients, read before
stopping for servers):

1. raw: a ``grpc.aio`` server (handlers registered with ``grpc.method_handlers_generic_handler``) and a
   ``grpc.aio`` client moving the same number of bytes through the real
   ``streaming.v1.StreamingService/UploadFile`` and ``/DownloadFile`` message types, from memory: no disk, no
   hashing -- the stack's limit; in 1 MiB messages (the stack's best, the most the contract's chunks take),
   and also in the project's chunk sizes when they differ;
2. disk: ``--size-mib`` written in 1 MiB blocks and fsynced, in the directory where ``streamcli serve`` writes
   uploads (``DATA/blobs/partial``): a durable transfer cannot beat it. The limit of each direction is the
   slower of raw (1 MiB) and disk, and each streamcli transfer is given as a ratio to it;
3. streamcli: ``streamcli serve`` and the CLI: ``streamcli --json upload FILE`` and
   ``streamcli --json download ID -o OUT`` of a file of random bytes, timed as the user sees them (start-up,
   verification and fsync included);
4. memory: peak RSS of the streamcli CLI client (upload, download) and of a fresh ``streamcli serve`` while
   moving ``--rss-size-mib`` up and down;
5. many small files: ``streamcli --json upload --parallel 4 F1 ... FN`` (one command, ``--small-files`` new
   files of ``--small-size`` random bytes) against a raw ``grpc.aio`` client making as many UploadFile calls of
   the same messages (metadata, one chunk, trailer), 4 at a time on one channel, to the raw server, both timed
   spawn to exit, alternating, ``--small-rounds`` rounds;
6. chat under transfers: load A of ``bench/chat.py`` (``--chat-clients`` clients in one room of a fresh
   ``streamcli serve``, ``--chat-rate`` messages/s in all for ``--chat-duration`` s, every receive time - send
   time) alone, and while two ``streamcli upload``s and one ``streamcli download`` of ``--chat-transfer-mib``
   each run, again and again, through the same server (started 1 s before the chat load, stopped after it),
   alternating, ``--chat-rounds`` rounds of each; p99 of each condition over its rounds, and what the
   transfers moved meanwhile (MB/s: the server yields to the chat, ``serve --transfer-lag-target``, which
   ``--lag-target`` sets for this case's server).

Every transfer of 1-4 is timed as the wall time of its client process, spawn to exit; the raw clients also
report the time of the transfer alone (connected channel to last byte). Rounds run raw, disk and streamcli
round-robin, starting with a different one each round, after ``--warmup`` untimed rounds (on a VM, page
cache that lands in guest memory never touched before can be several times slower to write than page cache
reused from deleted files: the warm-up makes every timed round reuse it alike), with ``os.sync()`` before
every timed transfer so that one's dirty pages are not written back on the next one's time; the figures are
the medians over rounds. Every transfer is verified (size, and SHA-256 where bytes are stored) outside its
timing; stored copies and downloads are deleted after each round. MB = 10**6 bytes.

Run from anywhere, with the interpreter of the environment streamcli is installed in (Linux only; the
files go to a temporary directory under /tmp: about 3x --size-mib, then 3x --rss-size-mib, of free space)::

    python bench/transfer.py [--size-mib 1024] [--rss-size-mib 2048] [--rounds 3] [--warmup 1] [--only DIRECTION]
        [--small-files 1000] [--small-size 4096] [--small-rounds 2]
        [--chat-clients 50] [--chat-rate 50] [--chat-duration 5] [--chat-rounds 2] [--chat-transfer-mib 1024]
        [--lag-target DURATION]

A quick run: ``--size-mib 64 --rss-size-mib 0 --rounds 1 --warmup 0 --small-files 50 --chat-clients 6
--chat-duration 2 --chat-rounds 1 --chat-transfer-mib 64``; ``--small-files 0`` and ``--chat-clients 0`` skip
those cases. ``--only upload`` or ``--only download`` times one direction of the raw streams and of streamcli
(a download still needs its upload, untimed). Each transfer's row also gives the client process's CPU per MiB
(user + system, start-up and exit included; median over rounds), less sensitive than MB/s to other work on the
machine.

Standard library, grpc and streamcli only; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import chat as chat_bench  # bench/chat.py: its client processes and load A
import grpc
from _common import (
    MB,
    PY,
    SERVICE,
    STREAMCLI,
    Run,
    Served,
    check,
    clean_env,
    free_port,
    last_json,
    load_line,
    run_client,
    run_raw_server,
    serve,
    verdict,
)

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.client.transfer import CHUNK_SIZE
from streamcli.services.files import DOWNLOAD_CHUNK_SIZE

SCRIPT = pathlib.Path(__file__).resolve()
MIB = 1 << 20
RSS_LIMIT_MB = 150.0
DIRECTIONS = ("upload", "download")
LABELS = {
    "raw-1MiB": "raw grpc.aio 1 MiB",
    "raw-project": "raw grpc.aio project's",
    "raw": "raw grpc.aio",
    "streamcli": "streamcli CLI",
}


# --- processes -------------------------------------------------------------------------------------------------


def write_random(path: pathlib.Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256."""
    hasher = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left:
            block = os.urandom(min(MIB, left))
            handle.write(block)
            hasher.update(block)
            left -= len(block)
    return hasher.hexdigest()


def sha256_of(path: pathlib.Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(MIB):
            hasher.update(block)
    return hasher.hexdigest()


# --- the workers (each run as `python bench/transfer.py _worker ROLE ...`) ------------------------------------


def worker_argv(role: str, *args: str) -> list[str]:
    return [PY, str(SCRIPT), "_worker", role, *args]


def generic_handler(upload: Any, download: Any) -> grpc.GenericRpcHandler:
    """UploadFile and DownloadFile with the real message types, nothing else."""
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "UploadFile": grpc.stream_unary_rpc_method_handler(
                upload,
                request_deserializer=pb.UploadFileRequest.FromString,
                response_serializer=pb.UploadFileResponse.SerializeToString,
            ),
            "DownloadFile": grpc.unary_stream_rpc_method_handler(
                download,
                request_deserializer=pb.DownloadFileRequest.FromString,
                response_serializer=pb.DownloadFileResponse.SerializeToString,
            ),
        },
    )


async def raw_server() -> None:
    """grpc.aio from memory: uploads are counted and dropped; a download of ``file_id`` = "N:C" sends N bytes in
    messages of C bytes."""
    blocks: dict[int, bytes] = {}

    async def upload(requests: AsyncIterator[pb.UploadFileRequest], context: Any) -> pb.UploadFileResponse:
        received = 0
        async for request in requests:
            received += len(request.chunk)
        return pb.UploadFileResponse(bytes_uploaded=received)

    async def download(request: pb.DownloadFileRequest, context: Any) -> AsyncIterator[pb.DownloadFileResponse]:
        total_text, _, chunk_text = request.file_id.partition(":")
        total, chunk, offset = int(total_text), int(chunk_text), 0
        block = blocks.setdefault(chunk, os.urandom(chunk))
        while offset < total:
            size = min(chunk, total - offset)
            yield pb.DownloadFileResponse(offset=offset, data=block if size == len(block) else block[:size])
            offset += size

    await run_raw_server(generic_handler(upload, download))


async def raw_client(address: str, direction: str, total: int, chunk: int) -> dict[str, object]:
    block = os.urandom(chunk)

    async def requests() -> AsyncIterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(metadata=pb.FileMetadata(filename="raw", total_size=total))
        sent = 0
        while sent < total:
            size = min(chunk, total - sent)
            yield pb.UploadFileRequest(chunk=block if size == len(block) else block[:size])
            sent += size

    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.StreamingServiceStub(channel)
        start = time.perf_counter()
        if direction == "upload":
            moved = (await stub.UploadFile(requests())).bytes_uploaded
        else:
            moved = 0
            async for response in stub.DownloadFile(pb.DownloadFileRequest(file_id=f"{total}:{chunk}")):
                moved += len(response.data)
        return {"seconds": time.perf_counter() - start, "bytes": moved}


async def small_raw_client(address: str, files: int, file_size: int, parallel: int) -> dict[str, object]:
    """``files`` UploadFile calls on one channel, ``parallel`` at a time, each the messages ``streamcli upload``
    sends for a small file (metadata, one chunk, trailer), from memory."""
    gate = asyncio.Semaphore(parallel)
    moved = 0

    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = pb_grpc.StreamingServiceStub(channel)

        async def one(n: int) -> None:
            nonlocal moved
            content = os.urandom(file_size)
            messages = [
                pb.UploadFileRequest(
                    metadata=pb.FileMetadata(filename=f"f{n}.bin", total_size=file_size), upload_id=uuid.uuid4().hex
                ),
                pb.UploadFileRequest(chunk=content),
                pb.UploadFileRequest(
                    trailer=pb.UploadTrailer(total_size=file_size, checksum=hashlib.sha256(content).hexdigest())
                ),
            ]
            async with gate:
                response = await stub.UploadFile(iter(messages))
            moved += response.bytes_uploaded

        start = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(files)))
        return {"seconds": time.perf_counter() - start, "bytes": moved}


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="transfer.py _worker")
    parser.add_argument("role", choices=("raw-server", "raw-client", "small-raw-client"))
    parser.add_argument("--address", default="")
    parser.add_argument("--direction", choices=DIRECTIONS, default="upload")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=MIB)
    parser.add_argument("--files", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    if args.role == "raw-server":
        asyncio.run(raw_server())
    elif args.role == "raw-client":
        print(json.dumps(asyncio.run(raw_client(args.address, args.direction, args.bytes, args.chunk))))
    else:
        print(json.dumps(asyncio.run(small_raw_client(args.address, args.files, args.bytes, args.parallel))))
    return 0


# --- the measurements --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float  # wall time of the client process
    transfer_seconds: float | None  # the transfer alone, as the raw clients report it
    peak_rss: int  # bytes, client process
    cpu: float  # seconds of CPU of the client process (user + system, start-up and exit included)


def timed(argv: Sequence[str]) -> tuple[Run, dict[str, Any]]:
    os.sync()  # earlier transfers' dirty pages are written back now, not on this one's time
    run = run_client(argv)
    return run, last_json(run.stdout)


def sample(run: Run, result: dict[str, Any]) -> Sample:
    seconds = result.get("seconds")
    return Sample(run.seconds, float(seconds) if seconds is not None else None, run.peak_rss, run.cpu)


def round_raw(served: Served, size: int, chunks: dict[str, int], directions: Sequence[str]) -> dict[str, Sample]:
    samples = {}
    for direction in directions:
        argv = ("--address", served.address, "--direction", direction, "--bytes", str(size))
        run, result = timed(worker_argv("raw-client", *argv, "--chunk", str(chunks[direction])))
        check(result["bytes"] == size, f"raw {direction} moved {result['bytes']} of {size} bytes")
        samples[direction] = sample(run, result)
    return samples


def disk_rate(directory: pathlib.Path, size: int) -> float:
    """MB/s of writing ``size`` bytes in 1 MiB blocks to a new file in ``directory``, fsync included (as a
    durable transfer must); the file is deleted after."""
    block = os.urandom(MIB)
    path = directory / f"disk-probe-{uuid.uuid4().hex}"
    os.sync()
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left:
            left -= os.write(fd, block[: min(MIB, left)])
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    return mbps(size, seconds)


def streamcli_transfers(
    served: Served, src: pathlib.Path, size: int, digest: str, directions: Sequence[str] = DIRECTIONS
) -> dict[str, Sample]:
    """``streamcli upload`` then ``streamcli download`` of ``src``, verified; the stored copy is deleted after.
    Only the ``directions`` given are reported (a download needs its upload all the same)."""
    cli = (*STREAMCLI, "--address", served.address, "--json")
    run, result = timed((*cli, "upload", str(src)))
    check(result["size"] == size and result["sha256"] == digest, f"streamcli upload: {result}")
    samples = {"upload": sample(run, result)}
    file_id = result["id"]
    if "download" not in directions:
        run_client((*STREAMCLI, "--address", served.address, "files", "rm", file_id))
        return samples
    out = src.with_name("streamcli.out")
    run, result = timed((*cli, "download", file_id, "-o", str(out)))
    check(result["size"] == size and result["sha256"] == digest, f"streamcli download: {result}")
    check(out.stat().st_size == size and sha256_of(out) == digest, "streamcli download: wrong bytes on disk")
    samples["download"] = sample(run, result)
    out.unlink()
    run_client((*STREAMCLI, "--address", served.address, "files", "rm", file_id))
    return {direction: samples[direction] for direction in directions}


def streamcli_serve(tmp: pathlib.Path, name: str, *extra: str) -> tuple[str, list[str]]:
    """The data dir and command line of a fresh ``streamcli serve`` on a free port."""
    data = tmp / name
    return str(data), [*STREAMCLI, "serve", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(data), *extra]


@dataclasses.dataclass
class Results:
    size: int
    samples: dict[tuple[str, str], list[Sample]]  # (kind, direction) -> one per round
    disk: list[float]  # MB/s of write + fsync, one per round
    server_rss: dict[str, int]  # kind -> peak RSS of its server over all rounds
    rss_size: int = 0
    rss_client: dict[str, int] = dataclasses.field(default_factory=dict)  # direction -> peak RSS
    rss_server: int = 0
    rss_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def raw_kinds() -> dict[str, dict[str, int]]:
    """The raw streams to measure: at 1 MiB messages (the stack's best), and at the project's chunk sizes if
    they differ."""
    kinds = {"raw-1MiB": {"upload": MIB, "download": MIB}}
    if (CHUNK_SIZE, DOWNLOAD_CHUNK_SIZE) != (MIB, MIB):
        kinds["raw-project"] = {"upload": CHUNK_SIZE, "download": DOWNLOAD_CHUNK_SIZE}
    return kinds


def measure(
    tmp: pathlib.Path, size: int, rss_size: int, rounds: int, warmup: int, directions: Sequence[str] = DIRECTIONS
) -> Results:
    src = tmp / "source.bin"
    print(f"writing {size / MIB:.0f} MiB of random bytes ...", flush=True)
    digest = write_random(src, size)
    raws = raw_kinds()
    kinds = (*raws, "disk", "streamcli")
    results = Results(size, {(k, d): [] for k in (*raws, "streamcli") for d in directions}, [], {})
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(serve("raw server", worker_argv("raw-server"), tmp / "raw.log"))
        data_dir, argv = streamcli_serve(tmp, "data")
        ours = stack.enter_context(serve("streamcli serve", argv, tmp / "serve.log"))
        partial_dir = pathlib.Path(data_dir) / "blobs" / "partial"  # where the server writes uploads
        for round_ in range(warmup + rounds):
            shift = round_ % len(kinds)
            for kind in (*kinds[shift:], *kinds[:shift]):
                what = f"warm-up round {round_ + 1}" if round_ < warmup else f"round {round_ - warmup + 1}/{rounds}"
                print(f"{what}: {kind} ...", flush=True)
                if kind == "disk":
                    rate = disk_rate(partial_dir, size)
                    if round_ >= warmup:
                        results.disk.append(rate)
                    continue
                samples = (
                    round_raw(raw, size, raws[kind], directions)
                    if kind in raws
                    else streamcli_transfers(ours, src, size, digest, directions)
                )
                if round_ >= warmup:
                    for direction, value in samples.items():
                        results.samples[kind, direction].append(value)
        results.server_rss = {"raw": raw.peak_rss(), "streamcli": ours.peak_rss()}
    src.unlink()

    if rss_size:
        big = tmp / "big.bin"
        print(f"writing {rss_size / MIB:.0f} MiB of random bytes for the memory run ...", flush=True)
        big_digest = write_random(big, rss_size)
        _, argv = streamcli_serve(tmp, "rss-data")
        with serve("streamcli serve (memory run)", argv, tmp / "serve-rss.log") as served:
            print(f"memory run: streamcli upload + download of {rss_size / MIB:.0f} MiB ...", flush=True)
            samples = streamcli_transfers(served, big, rss_size, big_digest)
            results.rss_server = served.peak_rss()
        results.rss_size = rss_size
        results.rss_client = {direction: s.peak_rss for direction, s in samples.items()}
        results.rss_seconds = {direction: s.seconds for direction, s in samples.items()}
        big.unlink()
    return results


# --- many small files ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Small:
    files: int
    file_size: int
    parallel: int
    streamcli: list[float] = dataclasses.field(default_factory=list)  # files/s, spawn to exit
    raw: list[float] = dataclasses.field(default_factory=list)  # files/s, spawn to exit
    raw_only: list[float] = dataclasses.field(default_factory=list)  # files/s, the calls alone


def measure_small(tmp: pathlib.Path, files: int, file_size: int, parallel: int, rounds: int) -> Small:
    """``streamcli upload`` of ``files`` new files of ``file_size`` bytes (one command) against as many raw
    UploadFile calls of the same messages, ``parallel`` at a time both, alternating."""
    small = Small(files, file_size, parallel)
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(serve("raw server", worker_argv("raw-server"), tmp / "small-raw.log"))
        _, argv = streamcli_serve(tmp, "small-data")
        ours = stack.enter_context(serve("streamcli serve", argv, tmp / "small-serve.log"))
        for round_ in range(rounds):
            for kind in ("streamcli", "raw") if round_ % 2 == 0 else ("raw", "streamcli"):
                print(f"small files, round {round_ + 1}/{rounds}: {kind}, {files} x {file_size} bytes ...", flush=True)
                if kind == "raw":
                    args = ("--address", raw.address, "--files", str(files), "--bytes", str(file_size))
                    run, result = timed(worker_argv("small-raw-client", *args, "--parallel", str(parallel)))
                    check(result["bytes"] == files * file_size, f"raw small files: {result}")
                    small.raw.append(files / run.seconds)
                    small.raw_only.append(files / float(result["seconds"]))
                    continue
                directory = tmp / f"small-{round_}"
                directory.mkdir()
                paths = []
                for n in range(files):
                    path = directory / f"f{n:05d}.bin"
                    path.write_bytes(os.urandom(file_size))
                    paths.append(str(path))
                cli = (*STREAMCLI, "--address", ours.address, "--json", "upload", "--parallel", str(parallel))
                os.sync()
                run = run_client((*cli, *paths))
                stored = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
                check(len(stored) == files and all(r["size"] == file_size for r in stored), "streamcli small files")
                small.streamcli.append(files / run.seconds)
                shutil.rmtree(directory)
    return small


# --- chat while transfers run --------------------------------------------------------------------------------------


@dataclasses.dataclass
class ChatLoad:
    clients: int
    rate: float
    transfer_size: int
    alone: list[float] = dataclasses.field(default_factory=list)  # ms, every latency of the rounds without transfers
    during: list[float] = dataclasses.field(default_factory=list)  # ms, of the rounds with them
    round_p99: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    transfers_done: int = 0  # transfers that completed during the loaded rounds
    moved: list[float] = dataclasses.field(default_factory=list)  # MB/s the transfers moved during each chat load


class TransferMeter:
    """Bytes the chat case's transfers have moved: ``size`` per completed transfer, plus what the running ones
    have on disk (the server's partial upload files, the download's ``.part``), polled every 50 ms. A
    finished transfer's file leaves before its process is counted as done: the figure never goes back,
    so the moment between is not taken for bytes lost."""

    def __init__(self, partial_dir: pathlib.Path, download: pathlib.Path, done: list[int], size: int) -> None:
        self.files = (partial_dir, download)
        self.done, self.size = done, size
        self.moved = 0

    def poll(self) -> int:
        partial_dir, download = self.files
        on_disk = 0
        for path in [*partial_dir.glob("*"), download.with_name(download.name + ".part")]:
            with contextlib.suppress(FileNotFoundError):
                on_disk += path.stat().st_size
        self.moved = max(self.moved, self.done[0] * self.size + on_disk)
        return self.moved

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.05)


async def transfer_loop(argv: Sequence[str], stop: asyncio.Event, done: list[int], log: pathlib.Path) -> None:
    """Run ``argv`` again and again until ``stop``; the one running then is stopped."""
    while not stop.is_set():
        with chat_bench.log_file(log) as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=err, env=clean_env()
            )
        finished = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((finished, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not finished.done():
            proc.kill()
            await finished
        elif proc.returncode == 0:
            done[0] += 1
        else:
            check(False, f"{' '.join(argv)} exited with {proc.returncode} (see {log})")


async def measure_chat(tmp: pathlib.Path, args: argparse.Namespace) -> ChatLoad:
    """Load A of bench/chat.py (``--chat-clients`` clients in one room, ``--chat-rate`` messages/s) on one
    ``streamcli serve``, alone and while two uploads and one download of ``--chat-transfer-mib`` run through
    the same server, alternating, ``--chat-rounds`` rounds of each."""
    size = args.chat_transfer_mib * MIB
    load = ChatLoad(args.chat_clients, args.chat_rate, size)
    sources = [tmp / f"chat-up-{n}.bin" for n in range(2)]
    print(f"writing 2 x {args.chat_transfer_mib} MiB of random bytes for the chat case ...", flush=True)
    for source in sources:
        write_random(source, size)
    # Written back now: left dirty, the kernel writes them back 30 s later, in the middle of the loaded rounds,
    # and every fsync on the disk (the chat store's too) waits behind them (bench/README.md, "File transfer").
    os.sync()
    chat_args = argparse.Namespace(rate=args.chat_rate, duration=args.chat_duration, clients=args.chat_clients)
    async with contextlib.AsyncExitStack() as stack:
        extra = ("--transfer-lag-target", args.lag_target) if args.lag_target else ()
        data, argv = streamcli_serve(tmp, "chat-data", "--chat-rate", "100000", *extra)
        served = stack.enter_context(serve("streamcli serve (chat)", argv, tmp / "chat-serve.log"))
        cli = (*STREAMCLI, "--address", served.address, "--json")
        stored = last_json(run_client((*cli, "upload", str(sources[0]), "--name", "to-download.bin")).stdout)
        workers = await stack.enter_async_context(
            chat_bench.fleet(served.address, args.chat_clients, 2, 1, "u", tmp / "chat")
        )
        side = chat_bench.Side("streamcli", served, workers)
        print(f"chat: joining {args.chat_clients} clients ...", flush=True)
        await chat_bench.join_all(workers)
        await chat_bench.barrier(workers, "settled")
        transfers = [
            (*cli, "upload", str(sources[0])),
            (*cli, "upload", str(sources[1])),
            (*cli, "download", stored["id"], "-o", str(tmp / "chat-down.bin"), "--force", "--no-resume"),
        ]
        for round_ in range(args.chat_rounds):
            for during in (False, True) if round_ % 2 == 0 else (True, False):
                tag = f"{'during' if during else 'alone'}{round_}"
                stop, done = asyncio.Event(), [0]
                os.sync()  # (as before every timed transfer: what the last round wrote is not on this one's time)
                loops = []
                if during:
                    print(f"chat round {round_ + 1}: 2 uploads + 1 download of {args.chat_transfer_mib} MiB ...")
                    # (the download starts over each time: a .part left by the last round is not progress)
                    (tmp / "chat-down.bin.part").unlink(missing_ok=True)
                    loops = [
                        asyncio.ensure_future(transfer_loop(t, stop, done, tmp / f"chat-transfer-{n}.log"))
                        for n, t in enumerate(transfers)
                    ]
                    await asyncio.sleep(1.0)  # the transfers are under way (past start-up) before the chat load
                meter = TransferMeter(pathlib.Path(data) / "blobs" / "partial", tmp / "chat-down.bin", done, size)
                polling = asyncio.ensure_future(meter.run())
                before = len(side.result.latencies)
                try:
                    started, moved = time.monotonic(), meter.poll()
                    await chat_bench.load_a(side, chat_args, tag, None)
                    if during:
                        load.moved.append((meter.poll() - moved) / (time.monotonic() - started) / MB)
                finally:
                    polling.cancel()
                    stop.set()
                    await asyncio.gather(*loops)
                latencies = side.result.latencies[before:]
                (load.during if during else load.alone).extend(latencies)
                load.round_p99.append((tag, side.result.round_p99[-1]))
                load.transfers_done += done[0]
        print(f"chat: {side.result.sent} messages sent, to {args.chat_clients - 1} other clients each", flush=True)
    return load


# --- the report --------------------------------------------------------------------------------------------------


def mbps(size: int, seconds: float) -> float:
    return size / seconds / MB


def report(results: Results) -> dict[str, float]:
    """Print the transfer figures; returns streamcli's ratio to the limit per direction."""
    size = results.size
    median_rate: dict[tuple[str, str], float] = {}
    print(f"\n{size / MIB:.0f} MiB per transfer, median of {len(results.disk)} rounds:\n")
    columns = [("transfer", -28), ("MB/s", 7), ("min", 7), ("max", 7), ("s", 6), ("transfer-only MB/s", 18)]
    columns += [("client peak MB", 14), ("client CPU ms/MiB", 17)]
    print("  ".join(f"{name:<{-width}}" if width < 0 else f"{name:>{width}}" for name, width in columns))
    print("  ".join("-" * abs(width) for _, width in columns))
    kinds = sorted({kind for kind, _ in results.samples}, key=lambda k: (k == "streamcli", k))
    directions = [d for d in DIRECTIONS if any(direction == d for _, direction in results.samples)]
    for direction in directions:
        for kind in kinds:
            samples = results.samples[kind, direction]
            rates = [mbps(size, s.seconds) for s in samples]
            median_rate[kind, direction] = statistics.median(rates)
            only = [s.transfer_seconds for s in samples if s.transfer_seconds is not None]
            only_text = f"{mbps(size, statistics.median(only)):.1f}" if only else "-"
            label = f"{LABELS.get(kind, kind)} {direction}"
            print(
                f"{label:<28}  {median_rate[kind, direction]:>7.1f}  {min(rates):>7.1f}"
                f"  {max(rates):>7.1f}  {statistics.median(s.seconds for s in samples):>6.2f}  {only_text:>18}"
                f"  {max(s.peak_rss for s in samples) / MB:>14.1f}"
                f"  {statistics.median(s.cpu for s in samples) * 1000 / (size / MIB):>17.2f}"
            )
    disk = statistics.median(results.disk)
    rates_text = " ".join(f"{r:.1f}" for r in results.disk)
    print(
        f"{'disk write + fsync':<28}  {disk:>7.1f}  {min(results.disk):>7.1f}  {max(results.disk):>7.1f}"
        f"  ({rates_text})"
    )
    print("\nMB/s: the client process's wall time, spawn to exit (start-up included); transfer-only: connected")
    print("channel to last byte. disk: write + fsync of the same size in the server's partial/ directory.")
    print("client CPU: user + system of the client process per MiB moved (start-up and exit included), median.")
    servers = ", ".join(f"{LABELS.get(k, k)} {v / MB:.1f}" for k, v in results.server_rss.items())
    print(f"server peak RSS over all rounds, MB: {servers}")

    ratios = {}
    print(f"\n{'target (issue 18)':<52}  {'measured':>30}  verdict")
    print(f"{'-' * 52}  {'-' * 30}  -------")
    for direction in directions:
        raw = median_rate["raw-1MiB", direction]
        limit = min(raw, disk)
        ratios[direction] = median_rate["streamcli", direction] / limit
        which = "raw 1 MiB" if raw <= disk else "disk"
        measured = f"{ratios[direction]:.2f} of {limit:.0f} ({which})"
        print(f"{direction + ' >= 0.8 of the limit':<52}  {measured:>30}  {verdict(ratios[direction] >= 0.8)}")
    if results.rss_size:
        what = f"moving {results.rss_size / MIB:.0f} MiB"
        rows = [
            (f"client peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} up)", results.rss_client["upload"]),
            (f"client peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} down)", results.rss_client["download"]),
            (f"server peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} up + down)", results.rss_server),
        ]
        for label, peak in rows:
            print(f"{label:<52}  {f'{peak / MB:.1f} MB':>30}  {verdict(peak / MB < RSS_LIMIT_MB)}")
        memory_rates = ", ".join(f"{d} {mbps(results.rss_size, s):.1f} MB/s" for d, s in results.rss_seconds.items())
        print(f"(memory run: {memory_rates})")
    return ratios


def report_small(small: Small) -> None:
    ours, raw = statistics.median(small.streamcli), statistics.median(small.raw)
    print(f"\n{small.files} files of {small.file_size} bytes, {small.parallel} at a time, files/s (median; all):")
    print(f"  streamcli upload (one command)  {ours:8.1f}  ({' '.join(f'{r:.1f}' for r in small.streamcli)})")
    print(f"  raw UploadFile calls            {raw:8.1f}  ({' '.join(f'{r:.1f}' for r in small.raw)})")
    print(f"  raw, the calls alone            {statistics.median(small.raw_only):8.1f}")
    ratio = ours / raw
    label = "1,000 small files >= 0.5 of the raw calls' rate" if small.files == 1000 else "small files >= 0.5 of raw"
    print(f"{label:<52}  {f'{ratio:.2f}':>30}  {verdict(ratio >= 0.5)}")


def report_chat(load: ChatLoad) -> None:
    alone, during = sorted(load.alone), sorted(load.during)
    p99_alone, p99_during = chat_bench.percentile(alone, 0.99), chat_bench.percentile(during, 0.99)
    print(f"\nchat: {load.clients} clients, {load.rate:g} msg/s; p50 / p99 / max ms:")
    for name, values in (("alone", alone), ("during transfers", during)):
        p50, p99 = chat_bench.percentile(values, 0.5), chat_bench.percentile(values, 0.99)
        print(
            f"  {name:<18} {p50:8.1f} {p99:8.1f} {values[-1] if values else math.nan:8.1f}  ({len(values)} latencies)"
        )
    print("  rounds' p99: " + ", ".join(f"{tag} {p99:.1f}" for tag, p99 in load.round_p99))
    print(
        f"  transfers of {load.transfer_size / MIB:.0f} MiB completed during the loaded rounds: {load.transfers_done}"
    )
    if load.moved:
        rates = " ".join(f"{rate:.1f}" for rate in load.moved)
        print(f"  the transfers moved {statistics.median(load.moved):.1f} MB/s during the chat load ({rates})")
    ratio = p99_during / p99_alone
    print(f"{'chat p99 during transfers <= 2x without':<52}  {f'{ratio:.2f}x':>30}  {verdict(ratio <= 2.0)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--size-mib", type=int, default=1024, help="file moved in the timed runs (default: %(default)s)")
    add(
        "--rss-size-mib", type=int, default=2048, help="file moved in the memory run; 0 skips it (default: %(default)s)"
    )
    add("--rounds", type=int, default=3, help="timed rounds of every transfer (default: %(default)s)")
    add("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    add(
        "--only",
        choices=DIRECTIONS,
        default="",
        help="time one direction only (raw and streamcli; a download is still uploaded first, untimed)",
    )
    add(
        "--small-files", type=int, default=1000, help="files of the small-files case; 0 skips it (default: %(default)s)"
    )
    add("--small-size", type=int, default=4096, help="bytes per small file (default: %(default)s)")
    add("--small-rounds", type=int, default=2, help="rounds of the small-files case (default: %(default)s)")
    add("--chat-clients", type=int, default=50, help="chat clients; 0 skips the chat case (default: %(default)s)")
    add("--chat-rate", type=float, default=50.0, help="chat messages/s, all clients (default: %(default)s)")
    add("--chat-duration", type=float, default=5.0, help="seconds of chat load per round (default: %(default)s)")
    add("--chat-rounds", type=int, default=2, help="rounds alone and with transfers, each (default: %(default)s)")
    add("--chat-transfer-mib", type=int, default=1024, help="size of each transfer under chat (default: %(default)s)")
    add(
        "--lag-target",
        default="",
        help="the chat case's serve --transfer-lag-target, e.g. 5ms or 0 (default: the server's own)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rss_size_mib < 0 or args.rounds < 1 or args.warmup < 0:
        parser.error("--size-mib and --rounds must be >= 1, --rss-size-mib and --warmup >= 0")
    if args.small_files < 0 or args.small_size < 1 or args.chat_clients in (1,) or args.chat_transfer_mib < 1:
        parser.error("--small-files >= 0, --small-size >= 1, --chat-clients 0 or >= 2, --chat-transfer-mib >= 1")

    # SIGTERM unwinds like Ctrl-C: every server and client started is stopped, the temporary files deleted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli client: {' '.join(STREAMCLI)}")
    print(f"chunks: upload {CHUNK_SIZE // 1024} KiB (CHUNK_SIZE), download {DOWNLOAD_CHUNK_SIZE // 1024} KiB")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-", dir="/tmp") as tmp:
        directions = (args.only,) if args.only else DIRECTIONS
        sizes = (args.size_mib * MIB, args.rss_size_mib * MIB)
        results = measure(pathlib.Path(tmp), *sizes, args.rounds, args.warmup, directions)
        small = (
            measure_small(pathlib.Path(tmp), args.small_files, args.small_size, 4, args.small_rounds)
            if args.small_files
            else None
        )
        try:
            chat = asyncio.run(measure_chat(pathlib.Path(tmp), args)) if args.chat_clients else None
        except chat_bench.BenchError as exc:
            sys.exit(f"chat case failed: {exc}")
    report(results)
    if small is not None:
        report_small(small)
    if chat is not None:
        report_chat(chat)
    print(load_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
