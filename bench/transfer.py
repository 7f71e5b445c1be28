"""File transfer of ``streamcli upload`` / ``download``, measured against two baselines in the same run.

What it measures, on loopback (127.0.0.1), every server and every client in a process of its own so that the
peak RSS of each can be read (``VmHWM`` of ``/proc/PID/status``, polled every 10 ms for clients, read before
stopping for servers):

1. raw: a ``grpc.aio`` server (handlers registered with ``grpc.method_handlers_generic_handler``) and a
   ``grpc.aio`` client moving the same number of bytes in the same chunk sizes through the real
   ``streaming.v1.StreamingService/UploadFile`` and ``/DownloadFile`` message types, from memory: no disk, no
   hashing -- the stack's limit;
2. reference: a straightforward implementation, as in the original specification's example: a sync
   ``grpc.server(ThreadPoolExecutor)`` whose UploadFile opens the target in append mode, writes and closes it
   for every 64 KiB chunk and hashes with hashlib, and whose DownloadFile reads 64 KiB chunks, driven by a sync
   client (``grpc.insecure_channel``) that reads the file in 64 KiB chunks (and writes downloads to a file);
3. streamcli: ``streamcli serve`` and the CLI: ``streamcli --json upload FILE`` and
   ``streamcli --json download ID -o OUT`` of a file of random bytes, timed as the user sees them (start-up,
   the client's SHA-256 pre-hash, verification and fsync included);
4. memory: peak RSS of the streamcli CLI client (upload, download) and of a fresh ``streamcli serve`` while
   moving a larger file up and down.

Every transfer is timed as the wall time of its client process, spawn to exit, for all three alike; the raw
and reference clients also report the time of the transfer alone (connected channel to last byte). Rounds
run the three round-robin, starting with a different one each round, after ``--warmup`` untimed rounds (on a
VM, page cache that lands in guest memory never touched before can be several times slower to write than
page cache reused from deleted files: the warm-up makes every timed round reuse it alike), with ``os.sync()``
before every timed transfer so that one's dirty pages are not written back on the next one's time; the
figures are the medians over rounds. Every transfer is verified (size, and SHA-256 where bytes are stored)
outside its timing; stored copies and downloads are deleted after each round. MB = 10**6 bytes.

Run from anywhere, with the interpreter of the environment streamcli is installed in (Linux only; the
files go to a temporary directory under /tmp: about 3x --size-mib, then 3x --rss-size-mib, of free space)::

    python bench/transfer.py [--size-mib N] [--rss-size-mib N] [--rounds N] [--warmup N]

Standard library, grpc and streamcli only; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from _common import (
    MB,
    PY,
    SERVICE,
    STREAMCLI,
    Run,
    Served,
    check,
    free_port,
    last_json,
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
KINDS = ("raw", "reference", "streamcli")
DIRECTIONS = ("upload", "download")
LABELS = {"raw": "raw grpc.aio", "reference": "reference (sync)", "streamcli": "streamcli CLI"}


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
    """grpc.aio from memory: uploads are counted and dropped; a download of ``file_id`` = N bytes sends N bytes."""
    block = os.urandom(DOWNLOAD_CHUNK_SIZE)

    async def upload(requests: AsyncIterator[pb.UploadFileRequest], context: Any) -> pb.UploadFileResponse:
        received = 0
        async for request in requests:
            received += len(request.chunk)
        return pb.UploadFileResponse(bytes_uploaded=received)

    async def download(request: pb.DownloadFileRequest, context: Any) -> AsyncIterator[pb.DownloadFileResponse]:
        total, offset = int(request.file_id), 0
        while offset < total:
            size = min(DOWNLOAD_CHUNK_SIZE, total - offset)
            yield pb.DownloadFileResponse(offset=offset, data=block if size == len(block) else block[:size])
            offset += size

    await run_raw_server(generic_handler(upload, download))


async def raw_client(address: str, direction: str, total: int) -> dict[str, object]:
    block = os.urandom(CHUNK_SIZE)

    async def requests() -> AsyncIterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(metadata=pb.FileMetadata(filename="raw", total_size=total))
        sent = 0
        while sent < total:
            size = min(CHUNK_SIZE, total - sent)
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
            async for response in stub.DownloadFile(pb.DownloadFileRequest(file_id=str(total))):
                moved += len(response.data)
        return {"seconds": time.perf_counter() - start, "bytes": moved}


def reference_server(data_dir: pathlib.Path) -> None:
    """The straightforward sync server: open-append-close per chunk, hashlib, 64 KiB reads."""

    def upload(requests: Iterator[pb.UploadFileRequest], context: grpc.ServicerContext) -> pb.UploadFileResponse:
        first = next(requests, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send metadata first")
        file_id = uuid.uuid4().hex
        path = data_dir / file_id
        hasher = hashlib.sha256()
        size = 0
        for request in requests:
            chunk = request.chunk
            with open(path, "ab") as handle:
                handle.write(chunk)
            hasher.update(chunk)
            size += len(chunk)
        digest = hasher.hexdigest()
        return pb.UploadFileResponse(
            file_id=file_id, bytes_uploaded=size, checksum=digest, checksum_verified=digest == first.metadata.checksum
        )

    def download(request: pb.DownloadFileRequest, context: grpc.ServicerContext) -> Iterator[pb.DownloadFileResponse]:
        if not re.fullmatch(r"[0-9a-f]{32}", request.file_id):
            context.abort(grpc.StatusCode.NOT_FOUND, "no such file")
        path = data_dir / request.file_id
        size = path.stat().st_size
        with open(path, "rb") as handle:
            offset = 0
            info = pb.FileInfo(file_id=request.file_id, size=size)
            while chunk := handle.read(CHUNK_SIZE):
                yield pb.DownloadFileResponse(file=info if offset == 0 else None, offset=offset, data=chunk)
                offset += len(chunk)

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((generic_handler(upload, download),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    print(f"listening on 127.0.0.1:{port}", flush=True)
    try:
        stop.wait()
    finally:
        server.stop(1).wait()


def reference_client(address: str, direction: str, path: pathlib.Path, file_id: str) -> dict[str, object]:
    def requests() -> Iterator[pb.UploadFileRequest]:
        yield pb.UploadFileRequest(metadata=pb.FileMetadata(filename=path.name, total_size=path.stat().st_size))
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                yield pb.UploadFileRequest(chunk=chunk)

    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = pb_grpc.StreamingServiceStub(channel)
        start = time.perf_counter()
        if direction == "upload":
            response = stub.UploadFile(requests())
            return {
                "seconds": time.perf_counter() - start,
                "bytes": response.bytes_uploaded,
                "id": response.file_id,
                "sha256": response.checksum,
            }
        moved = 0
        with open(path, "wb") as handle:
            for response in stub.DownloadFile(pb.DownloadFileRequest(file_id=file_id)):
                handle.write(response.data)
                moved += len(response.data)
        return {"seconds": time.perf_counter() - start, "bytes": moved}


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="transfer.py _worker")
    parser.add_argument("role", choices=("raw-server", "raw-client", "reference-server", "reference-client"))
    parser.add_argument("--address", default="")
    parser.add_argument("--direction", choices=DIRECTIONS, default="upload")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--path", type=pathlib.Path)
    parser.add_argument("--file-id", default="")
    args = parser.parse_args(argv)
    if args.role == "raw-server":
        asyncio.run(raw_server())
    elif args.role == "reference-server":
        reference_server(args.path)
    elif args.role == "raw-client":
        print(json.dumps(asyncio.run(raw_client(args.address, args.direction, args.bytes))))
    else:
        print(json.dumps(reference_client(args.address, args.direction, args.path, args.file_id)))
    return 0


# --- the measurements --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float  # wall time of the client process
    transfer_seconds: float | None  # the transfer alone, as the raw and reference clients report it
    peak_rss: int  # bytes, client process


def timed(argv: Sequence[str]) -> tuple[Run, dict[str, Any]]:
    os.sync()  # earlier transfers' dirty pages are written back now, not on this one's time
    run = run_client(argv)
    return run, last_json(run.stdout)


def sample(run: Run, result: dict[str, Any]) -> Sample:
    seconds = result.get("seconds")
    return Sample(run.seconds, float(seconds) if seconds is not None else None, run.peak_rss)


def round_raw(served: Served, size: int) -> dict[str, Sample]:
    samples = {}
    for direction in DIRECTIONS:
        run, result = timed(
            worker_argv("raw-client", "--address", served.address, "--direction", direction, "--bytes", str(size))
        )
        check(result["bytes"] == size, f"raw {direction} moved {result['bytes']} of {size} bytes")
        samples[direction] = sample(run, result)
    return samples


def round_reference(
    served: Served, data_dir: pathlib.Path, src: pathlib.Path, size: int, digest: str
) -> dict[str, Sample]:
    address = ("--address", served.address)
    run, result = timed(worker_argv("reference-client", *address, "--direction", "upload", "--path", str(src)))
    check(result["bytes"] == size and result["sha256"] == digest, f"reference upload: {result}")
    samples = {"upload": sample(run, result)}
    file_id = result["id"]
    out = src.with_name("reference.out")
    args = ("--direction", "download", "--path", str(out), "--file-id", file_id)
    run, result = timed(worker_argv("reference-client", *address, *args))
    check(result["bytes"] == size and sha256_of(out) == digest, "reference download: wrong bytes")
    samples["download"] = sample(run, result)
    out.unlink()
    (data_dir / file_id).unlink()
    return samples


def streamcli_transfers(served: Served, src: pathlib.Path, size: int, digest: str) -> dict[str, Sample]:
    """``streamcli upload`` then ``streamcli download`` of ``src``, verified; the stored copy is deleted after."""
    cli = (*STREAMCLI, "--address", served.address, "--json")
    run, result = timed((*cli, "upload", str(src)))
    check(result["size"] == size and result["sha256"] == digest, f"streamcli upload: {result}")
    samples = {"upload": sample(run, result)}
    file_id = result["id"]
    out = src.with_name("streamcli.out")
    run, result = timed((*cli, "download", file_id, "-o", str(out)))
    check(result["size"] == size and result["sha256"] == digest, f"streamcli download: {result}")
    check(out.stat().st_size == size and sha256_of(out) == digest, "streamcli download: wrong bytes on disk")
    samples["download"] = sample(run, result)
    out.unlink()
    run_client((*STREAMCLI, "--address", served.address, "files", "rm", file_id))
    return samples


@dataclasses.dataclass
class Results:
    size: int
    samples: dict[tuple[str, str], list[Sample]]  # (kind, direction) -> one per round
    server_rss: dict[str, int]  # kind -> peak RSS of its server over all rounds
    rss_size: int = 0
    rss_client: dict[str, int] = dataclasses.field(default_factory=dict)  # direction -> peak RSS
    rss_server: int = 0
    rss_seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def measure(tmp: pathlib.Path, size: int, rss_size: int, rounds: int, warmup: int) -> Results:
    src = tmp / "source.bin"
    print(f"writing {size / MIB:.0f} MiB of random bytes ...", flush=True)
    digest = write_random(src, size)
    results = Results(size, {(k, d): [] for k in KINDS for d in DIRECTIONS}, {})
    ref_dir = tmp / "reference-data"
    ref_dir.mkdir()
    with contextlib.ExitStack() as stack:
        servers = {
            "raw": stack.enter_context(serve("raw server", worker_argv("raw-server"), tmp / "raw.log")),
            "reference": stack.enter_context(
                serve("reference server", worker_argv("reference-server", "--path", str(ref_dir)), tmp / "ref.log")
            ),
            "streamcli": stack.enter_context(
                serve(
                    "streamcli serve",
                    (*STREAMCLI, "serve", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / "data")),
                    tmp / "serve.log",
                )
            ),
        }
        for round_ in range(warmup + rounds):
            shift = round_ % len(KINDS)
            for kind in (*KINDS[shift:], *KINDS[:shift]):
                what = f"warm-up round {round_ + 1}" if round_ < warmup else f"round {round_ - warmup + 1}/{rounds}"
                print(f"{what}: {kind} upload + download ...", flush=True)
                if kind == "raw":
                    samples = round_raw(servers[kind], size)
                elif kind == "reference":
                    samples = round_reference(servers[kind], ref_dir, src, size, digest)
                else:
                    samples = streamcli_transfers(servers[kind], src, size, digest)
                if round_ >= warmup:
                    for direction, value in samples.items():
                        results.samples[kind, direction].append(value)
        results.server_rss = {kind: served.peak_rss() for kind, served in servers.items()}
    src.unlink()

    if rss_size:
        big = tmp / "big.bin"
        print(f"writing {rss_size / MIB:.0f} MiB of random bytes for the memory run ...", flush=True)
        big_digest = write_random(big, rss_size)
        argv = (*STREAMCLI, "serve", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / "rss-data"))
        with serve("streamcli serve (memory run)", argv, tmp / "serve-rss.log") as served:
            print(f"memory run: streamcli upload + download of {rss_size / MIB:.0f} MiB ...", flush=True)
            samples = streamcli_transfers(served, big, rss_size, big_digest)
            results.rss_server = served.peak_rss()
        results.rss_size = rss_size
        results.rss_client = {direction: s.peak_rss for direction, s in samples.items()}
        results.rss_seconds = {direction: s.seconds for direction, s in samples.items()}
        big.unlink()
    return results


# --- the report --------------------------------------------------------------------------------------------------


def mbps(size: int, seconds: float) -> float:
    return size / seconds / MB


def report(results: Results) -> None:
    size = results.size
    median_rate: dict[tuple[str, str], float] = {}
    print(f"\n{size / MIB:.0f} MiB per transfer, median of {len(results.samples['raw', 'upload'])} rounds:\n")
    columns = (("transfer", -28), ("MB/s", 7), ("min", 7), ("max", 7), ("s", 6), ("transfer-only MB/s", 18))
    columns += (("client peak MB", 14),)
    print("  ".join(f"{name:<{-width}}" if width < 0 else f"{name:>{width}}" for name, width in columns))
    print("  ".join("-" * abs(width) for _, width in columns))
    for direction in DIRECTIONS:
        for kind in KINDS:
            samples = results.samples[kind, direction]
            rates = [mbps(size, s.seconds) for s in samples]
            median_rate[kind, direction] = statistics.median(rates)
            only = [s.transfer_seconds for s in samples if s.transfer_seconds is not None]
            only_text = f"{mbps(size, statistics.median(only)):.1f}" if only else "-"
            print(
                f"{LABELS[kind] + ' ' + direction:<28}  {median_rate[kind, direction]:>7.1f}  {min(rates):>7.1f}"
                f"  {max(rates):>7.1f}  {statistics.median(s.seconds for s in samples):>6.2f}  {only_text:>18}"
                f"  {max(s.peak_rss for s in samples) / MB:>14.1f}"
            )
    print("\nMB/s: the client process's wall time, spawn to exit; transfer-only: connected channel to last byte.")
    ceiling = ", ".join(f"{d} {median_rate['raw', d] / median_rate['reference', d]:.2f}x" for d in DIRECTIONS)
    print(f"raw / reference: {ceiling} (streamcli/ref can only reach this much while streamcli <= raw)")
    servers = ", ".join(f"{LABELS[k]} {v / MB:.1f}" for k, v in results.server_rss.items())
    print(f"server peak RSS over all rounds, MB: {servers}")

    print(f"\n{'target (from the issue)':<52}  {'measured':>22}  verdict")
    print(f"{'-' * 52}  {'-' * 22}  -------")
    for direction in DIRECTIONS:
        ours = median_rate["streamcli", direction]
        raw = ours / median_rate["raw", direction]
        ref = ours / median_rate["reference", direction]
        print(f"{direction + ' >= 50% of raw grpc.aio':<52}  {f'streamcli/raw {raw:.2f}':>22}  {verdict(raw >= 0.5)}")
        print(f"{direction + ' >= 2x the reference':<52}  {f'streamcli/ref {ref:.2f}x':>22}  {verdict(ref >= 2.0)}")
    if results.rss_size:
        what = f"moving {results.rss_size / MIB:.0f} MiB"
        rows = [
            (f"client peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} up)", results.rss_client["upload"]),
            (f"client peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} down)", results.rss_client["download"]),
            (f"server peak RSS < {RSS_LIMIT_MB:.0f} MB ({what} up + down)", results.rss_server),
        ]
        for label, peak in rows:
            print(f"{label:<52}  {f'{peak / MB:.1f} MB':>22}  {verdict(peak / MB < RSS_LIMIT_MB)}")
        rates = ", ".join(f"{d} {mbps(results.rss_size, s):.1f} MB/s" for d, s in results.rss_seconds.items())
        print(f"\n(memory run: {rates})")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--size-mib", type=int, default=1024, help="file moved in the timed runs (default: %(default)s)"
    )
    parser.add_argument(
        "--rss-size-mib", type=int, default=2048, help="file moved in the memory run; 0 skips it (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of every transfer (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.rss_size_mib < 0 or args.rounds < 1 or args.warmup < 0:
        parser.error("--size-mib and --rounds must be >= 1, --rss-size-mib and --warmup >= 0")

    # SIGTERM unwinds like Ctrl-C: every server and client started is stopped, the temporary files deleted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli client: {' '.join(STREAMCLI)}")
    print(f"chunks: upload {CHUNK_SIZE // 1024} KiB (CHUNK_SIZE), download {DOWNLOAD_CHUNK_SIZE // 1024} KiB")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-", dir="/tmp") as tmp:
        results = measure(pathlib.Path(tmp), args.size_mib * MIB, args.rss_size_mib * MIB, args.rounds, args.warmup)
    report(results)
    print(
        "load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
            *load, *os.getloadavg()
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
