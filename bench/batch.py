"""Batch ingest: ``streamcli batch ingest`` of an NDJSON file end to end, against the limit measured in the same run.

What it measures, on loopback (127.0.0.1), every server and every client in a process of its own:

1. the limit, the slower of two baselines fed the same records, prepared before the timing (read from the
   file with streamcli's own reader, ``streamcli.client.records.read_ndjson``, in messages of
   ``MESSAGE_RECORDS`` as the CLI sends them):

   a. raw gRPC: a ``grpc.aio`` client streams the pre-serialized ``ProcessDataBatchRequest`` messages over
      ``streaming.v1.StreamingService/ProcessDataBatch`` to a ``grpc.aio`` server (handlers registered with
      ``grpc.method_handlers_generic_handler``) that decodes each message, counts its records and stores
      nothing; timed from the connected channel to the response;
   b. the store: the embedded store (``SqliteStore``, a fresh database) appends the same records directly, no
      gRPC, as the batch service appends them (one ``append`` per message, the record serialized, producer
      ``batch`` with sequence = index + 1: the deduplication included); the appends alone are timed;

2. streamcli: a fresh ``streamcli serve --data-dir TMP`` and ``streamcli --json batch ingest FILE``, timed as the
   user waits for it (the client process's wall time, spawn to exit, start-up and parsing included), checked
   (every record stored, none refused) outside the timing.

Rounds run the three round-robin, starting with a different one each round; medians are reported, with
the ratio of streamcli's records/s to the limit's. Peak RSS is ``VmHWM`` of ``/proc/PID/status`` (the CLI
polled every 10 ms, the server read before it is stopped); CPU seconds from ``/proc`` and rusage.

The memory run (``--rss-gb``, 0 skips it) writes a file of that size into the temporary directory (lines
like the timed file's, each with a ``note`` field of ``--rss-pad`` characters more), ingests it once into a
fresh server and reports both peaks against the 150 MB target; the directory is deleted at the end.

    python bench/batch.py [--lines 1000000] [--rounds 1] [--rss-gb 1] [--rss-pad 200]

Standard library, grpc and streamcli only; Linux only (``/proc``); not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import platform
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from _common import (
    MB,
    PY,
    SERVICE,
    STREAMCLI,
    check,
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
from streamcli.client.batches import MESSAGE_RECORDS
from streamcli.client.records import FieldMap, read_ndjson

SCRIPT = pathlib.Path(__file__).resolve()
#: Targets of issue 19.
RATIO_TARGET = 0.5
RSS_LIMIT_MB = 150
KEYS = 100


def write_ndjson(path: pathlib.Path, lines: int | None = None, size: int | None = None, pad: int = 0) -> int:
    """Write records (``lines`` of them, or until ``size`` bytes) like a sensor export; returns the lines."""
    note = f', "note": "{"x" * pad}"' if pad else ""
    written = count = 0
    with open(path, "w", encoding="ascii") as out:
        while (lines is None or count < lines) and (size is None or written < size):
            block = []
            for n in range(count, count + 10_000 if lines is None else min(count + 10_000, lines)):
                block.append(
                    f'{{"key": "sensor-{n % KEYS}", "value": {n % 10_007 * 0.25}, '
                    f'"timestamp": "2026-11-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:{n % 59:02d}.{n % 1000:03d}Z", '
                    f'"site": "north-{n % 7}", "seq": {n}{note}}}\n'
                )
            text = "".join(block)
            out.write(text)
            written += len(text)
            count += len(block)
    return count


def prepare(source: pathlib.Path, target: pathlib.Path) -> int:
    """The file's records as the CLI sends them, serialized ProcessDataBatchRequest messages length-prefixed
    in ``target``; returns the number of records."""
    records = 0
    with open(source, "rb") as stream, open(target, "wb") as out:
        message = pb.ProcessDataBatchRequest()
        for parsed in read_ndjson(stream, FieldMap()):
            if parsed.record is None:
                sys.exit(f"verification failed: line {parsed.line} parses: {parsed.problem}")
            message.records.append(pb.DataRecord.FromString(parsed.record))  # (the reader gives its bytes)
            if len(message.records) == MESSAGE_RECORDS:
                records += _put(out, message)
                message = pb.ProcessDataBatchRequest(first_index=records)
        if message.records:
            records += _put(out, message)
    return records


def _put(out: Any, message: pb.ProcessDataBatchRequest) -> int:
    data = message.SerializeToString()
    out.write(struct.pack("<I", len(data)) + data)
    return len(message.records)


def messages(path: pathlib.Path) -> Iterator[bytes]:
    with open(path, "rb") as stream:
        while header := stream.read(4):
            yield stream.read(struct.unpack("<I", header)[0])


# --- the workers (each run as `python bench/batch.py _worker ROLE ...`) -----------------------------------------


def worker_argv(role: str, *args: str) -> list[str]:
    return [PY, str(SCRIPT), "_worker", role, *args]


async def raw_server() -> None:
    """ProcessDataBatch that decodes every message, counts its records and stores nothing."""

    async def process(requests: AsyncIterator[pb.ProcessDataBatchRequest], context: Any) -> Any:
        received = 0
        async for request in requests:
            received += len(request.records)
        return pb.ProcessDataBatchResponse(records_received=received, records_processed=received, next_index=received)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ProcessDataBatch": grpc.stream_unary_rpc_method_handler(
                process,
                request_deserializer=pb.ProcessDataBatchRequest.FromString,
                response_serializer=pb.ProcessDataBatchResponse.SerializeToString,
            )
        },
    )
    await run_raw_server(handler)


async def raw_client(address: str, path: pathlib.Path) -> dict[str, Any]:
    """Stream the pre-serialized messages; the records the server counted and the seconds it took."""
    prepared = list(messages(path))

    async def requests() -> AsyncIterator[bytes]:
        for data in prepared:
            yield data

    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = channel.stream_unary(
            f"/{SERVICE}/ProcessDataBatch",
            request_serializer=None,  # the bytes as they are
            response_deserializer=pb.ProcessDataBatchResponse.FromString,
        )
        start = time.perf_counter()
        response = await call(requests())
        return {"seconds": time.perf_counter() - start, "records": response.records_received}


async def store_append(path: pathlib.Path, data_dir: pathlib.Path) -> dict[str, Any]:
    """The embedded store's appends of the records as the batch service makes them; the appends alone timed."""
    from streamcli.backends.base import NewRecord
    from streamcli.backends.sqlite import SqliteStore
    from streamcli.services.batches import PRODUCER, STORED

    chunks = []
    for data in messages(path):
        request = pb.ProcessDataBatchRequest.FromString(data)
        first = request.first_index
        chunks.append(
            [
                NewRecord(r.key, STORED, r.SerializeToString(), PRODUCER, first + offset + 1)
                for offset, r in enumerate(request.records)
            ]
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data_dir / "streamcli.db")
    stored = 0
    seconds = 0.0
    try:
        for chunk in chunks:
            start = time.perf_counter()
            stored += len(await store.append("batch:bench", chunk))
            seconds += time.perf_counter() - start
    finally:
        await store.close()
    return {"seconds": seconds, "records": stored}


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="batch.py _worker")
    parser.add_argument("role", choices=("raw-server", "raw-client", "store"))
    parser.add_argument("--address", default="")
    parser.add_argument("--messages", type=pathlib.Path)
    parser.add_argument("--data-dir", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.role == "raw-server":
        asyncio.run(raw_server())
    elif args.role == "raw-client":
        print(json.dumps(asyncio.run(raw_client(args.address, args.messages))))
    else:
        print(json.dumps(asyncio.run(store_append(args.messages, args.data_dir))))
    return 0


# --- the measurements --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float  # what the rate is computed from: the timed part (baselines) or the client's wall time (CLI)
    process_seconds: float  # the client process, spawn to exit
    client_cpu: float
    client_peak: int  # bytes
    server_cpu: float = 0.0
    server_peak: int = 0  # bytes


def baseline(role: str, records: int, *args: str) -> Sample:
    os.sync()
    run = run_client(worker_argv(role, *args))
    result = last_json(run.stdout)
    check(result["records"] == records, f"{role}: {result['records']} of {records} records")
    return Sample(float(result["seconds"]), run.seconds, run.cpu, run.peak_rss)


def streamcli_ingest(tmp: pathlib.Path, label: str, source: pathlib.Path, records: int) -> Sample:
    argv = (*STREAMCLI, "serve", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(tmp / label))
    with serve(f"streamcli serve ({label})", argv, tmp / f"{label}.log") as served:
        os.sync()
        run = run_client((*STREAMCLI, "--address", served.address, "--json", "batch", "ingest", str(source)))
        result = last_json(run.stdout)
        check(
            (result["stored"], result["refused"], result["complete"]) == (records, 0, True),
            f"streamcli stored {result['stored']} of {records}, refused {result['refused']}",
        )
        sample = Sample(run.seconds, run.seconds, run.cpu, run.peak_rss, served.cpu(), served.peak_rss())
    return sample


def measure(tmp: pathlib.Path, lines: int, rounds: int) -> tuple[int, int, dict[str, list[Sample]]]:
    source = tmp / "records.ndjson"
    write_ndjson(source, lines=lines)
    prepared = tmp / "messages.bin"
    records = prepare(source, prepared)
    samples: dict[str, list[Sample]] = {"raw": [], "store": [], "streamcli": []}
    with serve("raw server", worker_argv("raw-server"), tmp / "raw.log") as raw:
        kinds = list(samples)
        for number in range(rounds):
            for kind in kinds[number % 3 :] + kinds[: number % 3]:
                if kind == "raw":
                    sample = baseline("raw-client", records, "--address", raw.address, "--messages", str(prepared))
                elif kind == "store":
                    args = ("--messages", str(prepared), "--data-dir", str(tmp / f"store-{number}"))
                    sample = baseline("store", records, *args)
                else:
                    sample = streamcli_ingest(tmp, f"serve-{number}", source, records)
                samples[kind].append(sample)
                print(f"  round {number + 1} {kind}: {records / sample.seconds:,.0f} records/s", flush=True)
    return records, source.stat().st_size, samples


def memory_run(tmp: pathlib.Path, size: int, pad: int) -> tuple[int, int, Sample]:
    source = tmp / "rss.ndjson"
    records = write_ndjson(source, size=size, pad=pad)
    try:
        return records, source.stat().st_size, streamcli_ingest(tmp, "serve-rss", source, records)
    finally:
        source.unlink()


def median(samples: list[Sample], field: str) -> float:
    return statistics.median(float(getattr(s, field)) for s in samples)


def report(records: int, size: int, samples: dict[str, list[Sample]]) -> float:
    print(f"\n{records:,} records, {size / MB:.1f} MB of NDJSON, median of {len(samples['raw'])} round(s):\n")
    columns = ("records/s", "s", "process s", "client CPU s", "client peak MB", "server CPU s", "server peak MB")
    widths = (10, 6, 9, 12, 14, 12, 14)
    print(f"{'what':<40}  " + "  ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * n for n in (40, 10, 6, 9, 12, 14, 12, 14)))
    labels = {
        "raw": "(a) raw grpc.aio stream, nothing stored",
        "store": "(b) embedded store's appends, no gRPC",
        "streamcli": "streamcli batch ingest (CLI process)",
    }
    rates = {}
    for kind, label in labels.items():
        seconds = median(samples[kind], "seconds")
        rates[kind] = records / seconds
        server = (
            ""
            if kind != "streamcli"
            else (f"  {median(samples[kind], 'server_cpu'):>12.1f}  {median(samples[kind], 'server_peak') / MB:>14.1f}")
        )
        print(
            f"{label:<40}  {rates[kind]:>10,.0f}  {seconds:>6.2f}  {median(samples[kind], 'process_seconds'):>9.2f}"
            f"  {median(samples[kind], 'client_cpu'):>12.1f}  {median(samples[kind], 'client_peak') / MB:>14.1f}"
            + server
        )
    limit = min(rates["raw"], rates["store"])
    ratio = rates["streamcli"] / limit
    which = "raw gRPC" if rates["raw"] <= rates["store"] else "the store"
    print(f"\nlimit: {limit:,.0f} records/s ({which}, the slower); streamcli / limit: {ratio:.2f}")
    print(f"(a) / (b): {rates['raw'] / rates['store']:.2f}")
    return ratio


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lines", type=int, default=1_000_000, help="records in the timed file (%(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds of each (%(default)s)")
    parser.add_argument("--rss-gb", type=float, default=1.0, help="size of the memory run's file; 0 skips it")
    parser.add_argument("--rss-pad", type=int, default=200, help="characters of padding per memory-run line")
    args = parser.parse_args(argv)
    if args.lines < 1 or args.rounds < 1 or args.rss_gb < 0 or args.rss_pad < 0:
        parser.error("--lines and --rounds must be >= 1, --rss-gb and --rss-pad >= 0")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli client: {' '.join(STREAMCLI)}; {MESSAGE_RECORDS} records per message")
    load = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-", dir="/tmp") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        records, size, samples = measure(tmp, args.lines, args.rounds)
        ratio = report(records, size, samples)
        rss = memory_run(tmp, int(args.rss_gb * 10**9), args.rss_pad) if args.rss_gb else None
    print(f"\n{'target (issue 19)':<44}  {'measured':>16}  verdict")
    print(f"{'-' * 44}  {'-' * 16}  -------")
    print(f"{'end to end >= 0.5 of the limit':<44}  {ratio:>16.2f}  {verdict(ratio >= RATIO_TARGET)}")
    if rss is not None:
        rss_records, rss_size, sample = rss
        for label, peak in (("client", sample.client_peak), ("server", sample.server_peak)):
            what = f"{label} peak RSS < {RSS_LIMIT_MB} MB ({rss_size / 10**9:.2f} GB)"
            print(f"{what:<44}  {f'{peak / MB:.1f} MB':>16}  {verdict(peak / MB < RSS_LIMIT_MB)}")
        print(
            f"(memory run: {rss_records:,} records, {rss_records / sample.seconds:,.0f} records/s, "
            f"client CPU {sample.client_cpu:.1f} s, server CPU {sample.server_cpu:.1f} s)"
        )
    print(load_line(load, f"; {time.monotonic() - started:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
