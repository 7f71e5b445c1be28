"""Event tails: ``streamcli tail events`` replaying stored events, and live latency of many tails, in one run.

What it measures, on loopback (127.0.0.1), every server and every client in a process of its own:

1. raw baseline: a ``grpc.aio`` server (handlers registered with ``grpc.method_handlers_generic_handler``)
   streaming ``streaming.v1.StreamingService/StreamUserEvents`` responses built in memory beforehand from
   events like the stored ones (id, user, type, timestamp, a small JSON object as a Struct in the Any), (a) one
   event per response (--raw1-events of them: at its rate a million would take minutes) and (b) 500 per
   response (``BATCH_RECORDS``, what streamcli batches in replay), to a ``grpc.aio`` client that counts the
   events -- the stack's limit;
2. replay: ``streamcli serve`` with --events events published through the real PublishEvents RPC
   (``streamcli.client.events.publish_events``, 500 per message; the publish rate is reported too), then
   ``streamcli --json tail events --all-users --since 1d --no-follow > /dev/null`` timed as the user sees it
   (the client process's wall time, spawn to exit), and once with the human output to a file, for information.
   The first --json run goes to a file and is checked (every id from 1 to --events, in order) outside the
   timing; it also warms the server's page cache. Rounds run the two raw streams and streamcli round-robin,
   starting with a different one each round; the figures are the medians over --rounds rounds;
3. live latency, once per --batch value against each of two fresh servers: the raw server above in live mode
   (PublishEvents appends to a list in memory, every stream sends what is new since its position, at most 500
   events per response: a fan-out with no disk and no parsing) and ``streamcli serve``. --tails concurrent
   tails (``streamcli.client.events.tail_events`` with ``all_users``, each on a channel and a TCP connection
   of its own, spread over --tail-procs client processes: 100 Python processes would not fit 2 cores) and a
   publisher that sends --rate events/s for --seconds, --batch events per PublishEvents message on a steady
   schedule, every event stamped with its send time (``time.time()``) in its ``timestamp``; every tail records
   receive time minus send time (one machine, one clock). A warm-up second of events is published first and
   left out. Besides, --cli-tails real ``streamcli --json tail events --all-users`` processes print to a pipe
   read by this script, which notes the time each line arrives: publish to printed. One more run per server
   (unless --no-cli-publisher) has the real publishing path instead: a process writing one NDJSON line at a
   time (stamped when written, on the same schedule) to the stdin of ``streamcli --json events publish``, which
   batches what arrives within its --linger (ev/msg "cli" in the report).

Peak RSS is ``VmHWM`` of ``/proc/PID/status`` (servers: read before they are stopped; CLI clients: polled every
10 ms). CPU seconds: of the servers from ``/proc/PID/stat``, of the clients from the rusage of reaped children
(or their own, reported by the workers).

Run from anywhere, with the interpreter of the environment streamcli is installed in (Linux only; the
database goes to a temporary directory under /tmp, about 250 bytes per event)::

    python bench/tail.py [--events N] [--rounds N] [--tails N] [--rate N] [--seconds S] [--batch N ...]
                         [--no-cli-publisher]

Standard library, grpc and streamcli only; not part of the test suite.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import IO, Any

import grpc
from _common import (
    MB,
    PY,
    SERVICE,
    STREAMCLI,
    Served,
    check,
    children_cpu,
    free_port,
    last_json,
    load_line,
    run_client,
    run_raw_server,
    serve,
    spawn,
    verdict,
)
from google.protobuf.timestamp_pb2 import Timestamp

import streamcli
from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc
from streamcli.client.events import PUBLISH_BATCH, pack_data
from streamcli.services.logs import BATCH_RECORDS

SCRIPT = pathlib.Path(__file__).resolve()
ROOT_OF_STREAMCLI = pathlib.Path(streamcli.__file__).parent  # PYTHONPATH may point the run at a snapshot
RSS_LIMIT_MB = 150.0  # "bounded": the issue gives no number; the limit bench/transfer.py holds servers to
REPLAY_TARGET = 150_000.0  # events/s end to end
P99_TARGET_MS = 50.0
POOL = 10_000  # distinct events the raw server cycles through
WARMUP_USER = "bench-warmup"  # events of the warm-up second, left out of the latencies
REPLAY_KINDS = ("raw1", "raw-batched", "streamcli")


# --- the events -------------------------------------------------------------------------------------------------

_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
    "okhttp/4.12.0",
)
_FIELDS = (["email"], ["display_name", "avatar"], ["timezone"])


def event_fields(i: int, user: str | None = None) -> tuple[str, pb.UserEventType.ValueType, dict[str, Any]]:
    """Event number ``i`` (user, type, data): one of 1,000 users, types skewed as in life (half of them
    logins), small JSON data."""
    spread = (i * 2654435761) % 2**32
    slot = i % 20
    kind: pb.UserEventType.ValueType
    data: dict[str, Any]
    if slot < 10:
        kind, data = (
            pb.USER_EVENT_TYPE_LOGIN,
            {
                "ip": f"10.{spread % 256}.{(spread >> 8) % 256}.{(spread >> 16) % 250 + 1}",
                "agent": _AGENTS[spread % 3],
                "method": "password" if spread % 4 else "sso",
            },
        )
    elif slot < 16:
        kind, data = pb.USER_EVENT_TYPE_LOGOUT, {"session": f"{spread:08x}", "reason": "user" if i % 3 else "timeout"}
    elif slot < 19:
        kind, data = pb.USER_EVENT_TYPE_PROFILE_UPDATE, {"fields": _FIELDS[spread % 3], "source": "web"}
    else:
        kind, data = pb.USER_EVENT_TYPE_PASSWORD_CHANGE, {"ip": f"192.168.{spread % 256}.7", "mfa": True}
    return user or f"user-{spread % 1000:04d}", kind, data


def make_event(i: int, user: str | None = None) -> pb.UserEvent:
    """Event number ``i`` as a message (``event_fields``)."""
    user_id, kind, data = event_fields(i, user)
    event = pb.UserEvent(user_id=user_id, type=kind)
    event.data.CopyFrom(pack_data(data))
    return event


def event_line(i: int, user: str | None = None) -> bytes:
    """Event number ``i`` as a line for ``streamcli events publish``, stamped now (to the microsecond)."""
    user_id, kind, data = event_fields(i, user)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    record = {"user_id": user_id, "type": pb.UserEventType.Name(kind), "timestamp": now, "data": data}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def stamp_now(event: pb.UserEvent) -> None:
    event.timestamp.FromNanoseconds(time.time_ns())


# --- processes -------------------------------------------------------------------------------------------------


def streamcli_serve(data_dir: pathlib.Path) -> tuple[str, ...]:
    return (*STREAMCLI, "serve", "--address", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir))


# --- the workers (each run as `python bench/tail.py _worker ROLE ...`) ------------------------------------------


def worker_argv(role: str, *args: str) -> list[str]:
    return [PY, str(SCRIPT), "_worker", role, *args]


def channel(address: str) -> grpc.aio.Channel:
    """A channel with a TCP connection of its own (not shared with other channels of the process)."""
    return grpc.aio.insecure_channel(
        address, options=[*transport.client_options(), ("grpc.use_local_subchannel_pool", 1)]
    )


async def raw_server() -> None:
    """StreamUserEvents and PublishEvents from memory, in two modes.

    Replay: metadata ``x-events`` says how many events to stream, ``x-batch`` how many per response, cycling
    through pre-built responses. Live (no such metadata): a list in memory that PublishEvents appends to and
    streams follow, sending everything new since their position in one response (at most ``BATCH_RECORDS``), as
    streamcli's cursor does, from the end (or from the start when ``start_time`` is set) -- no disk, no parsing.
    """
    now = time.time_ns()
    events = []
    for i in range(1, POOL + 1):
        event = make_event(i)
        event.id = i
        event.timestamp.FromNanoseconds(now)
        events.append(event)
    pools: dict[int, list[pb.StreamUserEventsResponse]] = {}
    log: list[pb.UserEvent] = []
    appended = [asyncio.Event()]  # replaced after every append

    def responses(batch: int) -> list[pb.StreamUserEventsResponse]:
        if batch not in pools:
            server_time = Timestamp()
            server_time.FromNanoseconds(now)
            pools[batch] = [
                pb.StreamUserEventsResponse(
                    events=events[start : start + batch], position=events[start + batch - 1].id, server_time=server_time
                )
                for start in range(0, POOL - batch + 1, batch)
            ]
        return pools[batch]

    async def stream(request: pb.StreamUserEventsRequest, context: Any) -> AsyncIterator[pb.StreamUserEventsResponse]:
        metadata = dict(context.invocation_metadata())
        if "x-events" not in metadata:
            position = 0 if request.HasField("start_time") else len(log)
            yield pb.StreamUserEventsResponse(position=position)
            while True:
                if position < len(log):
                    batch = log[position : position + BATCH_RECORDS]
                    position += len(batch)
                    server_time = Timestamp()
                    server_time.FromNanoseconds(time.time_ns())
                    yield pb.StreamUserEventsResponse(events=batch, position=position, server_time=server_time)
                else:
                    await appended[0].wait()
        total, batch_size = int(metadata["x-events"]), int(metadata["x-batch"])
        pool = responses(batch_size)
        sent = index = 0
        while sent < total:
            response = pool[index % len(pool)]
            if total - sent < batch_size:
                response = pb.StreamUserEventsResponse(events=response.events[: total - sent])
            yield response
            sent += len(response.events)
            index += 1

    async def publish(requests: AsyncIterator[pb.PublishEventsRequest], context: Any) -> pb.PublishEventsResponse:
        first = len(log) + 1
        async for request in requests:
            for event in request.events:
                stored = pb.UserEvent()
                stored.CopyFrom(event)
                stored.id = len(log) + 1
                log.append(stored)
            wake, appended[0] = appended[0], asyncio.Event()
            wake.set()
        return pb.PublishEventsResponse(count=len(log) + 1 - first, first_id=first, last_id=len(log))

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "StreamUserEvents": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=pb.StreamUserEventsRequest.FromString,
                response_serializer=pb.StreamUserEventsResponse.SerializeToString,
            ),
            "PublishEvents": grpc.stream_unary_rpc_method_handler(
                publish,
                request_deserializer=pb.PublishEventsRequest.FromString,
                response_serializer=pb.PublishEventsResponse.SerializeToString,
            ),
        },
    )
    await run_raw_server(handler)


async def raw_client(address: str, total: int, batch: int) -> dict[str, object]:
    async with channel(address) as chan:
        await asyncio.wait_for(chan.channel_ready(), 10)
        stub = pb_grpc.StreamingServiceStub(chan)
        metadata = (("x-events", str(total)), ("x-batch", str(batch)))
        start = time.perf_counter()
        count = 0
        async for response in stub.StreamUserEvents(pb.StreamUserEventsRequest(all_users=True), metadata=metadata):
            count += len(response.events)
        return {"seconds": time.perf_counter() - start, "events": count}


async def publisher(address: str, total: int) -> dict[str, object]:
    """Publish ``total`` events the way ``streamcli events publish`` does (``publish_events``, 500 per message)."""
    from streamcli.client.connection import ConnectionSettings, connect
    from streamcli.client.events import publish_events

    async with connect(ConnectionSettings(address=address)) as conn:
        start = time.perf_counter()
        reply = await publish_events(conn, (make_event(i) for i in range(total)))
        return {
            "seconds": time.perf_counter() - start,
            "count": reply.count,
            "first_id": reply.first_id,
            "last_id": reply.last_id,
        }


async def live_publisher(address: str, rate: float, seconds: float, warmup: float, batch: int) -> dict[str, object]:
    """``rate`` events/s for ``warmup`` + ``seconds``, ``batch`` per message on a steady schedule, stamped when sent."""
    loop = asyncio.get_running_loop()
    warm_messages, messages = round(warmup * rate / batch), round(seconds * rate / batch)
    late: list[float] = []

    async def requests() -> AsyncIterator[pb.PublishEventsRequest]:
        start = loop.time()
        for message in range(warm_messages + messages):
            due = start + message * batch / rate
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            late.append(loop.time() - due)
            user = WARMUP_USER if message < warm_messages else None
            events = [make_event(message * batch + n, user) for n in range(batch)]
            for event in events:
                stamp_now(event)
            yield pb.PublishEventsRequest(events=events)

    async with channel(address) as chan:
        await asyncio.wait_for(chan.channel_ready(), 10)
        start = time.perf_counter()
        reply = await pb_grpc.StreamingServiceStub(chan).PublishEvents(requests())
        elapsed = time.perf_counter() - start
    late.sort()
    return {
        "warmup_events": warm_messages * batch,
        "events": messages * batch,
        "count": reply.count,
        "seconds": elapsed,
        "late_p99_ms": late[int(0.99 * (len(late) - 1))] * 1e3,
        "late_max_ms": late[-1] * 1e3,
    }


def feed(rate: float, seconds: float, warmup: float) -> None:
    """Write ``rate`` event lines a second to stdout for ``warmup`` + ``seconds``, each on its own (one write
    per line, as an application logging events would), stamped when written: the input of a live
    ``streamcli events publish``."""
    warm_lines, lines = round(warmup * rate), round(seconds * rate)
    start = time.monotonic()
    for n in range(warm_lines + lines):
        if (wait := start + n / rate - time.monotonic()) > 0:
            time.sleep(wait)
        os.write(1, event_line(n, WARMUP_USER if n < warm_lines else None))


class _ReadyCall:
    """A StreamUserEvents call that sets ``ready`` on its first response (the server's empty one, at once)."""

    def __init__(self, call: Any, ready: asyncio.Event) -> None:
        self._call = call
        self._ready = ready

    async def read(self) -> Any:
        response = await self._call.read()
        self._ready.set()
        return response

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class _ReadyStub:
    def __init__(self, stub: pb_grpc.StreamingServiceStub, ready: asyncio.Event) -> None:
        self._stub = stub
        self._ready = ready

    def StreamUserEvents(self, request: pb.StreamUserEventsRequest, metadata: Any = None) -> _ReadyCall:
        return _ReadyCall(self._stub.StreamUserEvents(request, metadata=metadata), self._ready)


async def tails(address: str, count: int, expect: int, deadline: float) -> tuple[dict[str, object], array.array[float]]:
    """``count`` live tails (``tail_events``, all users); prints "ready" once all are open, then records latencies.

    Each tail ends after ``expect`` events (warm-up included) or 30 s without one; all end by ``deadline`` s.
    Returns counts and the latencies (seconds, receive time minus the event's timestamp).
    """
    from streamcli.client.connection import Connection, ConnectionSettings
    from streamcli.client.events import tail_events
    from streamcli.client.tail import TailOptions

    settings = ConnectionSettings(address=address)
    options = TailOptions(follow=True, max_records=expect, idle_timeout=30.0)
    latencies = array.array("d")
    received = [0] * count
    measured = [0] * count
    out_of_order = [0] * count
    ready = [asyncio.Event() for _ in range(count)]

    async def tail(index: int) -> None:
        async with channel(address) as chan:
            conn = Connection(settings, chan, _ReadyStub(pb_grpc.StreamingServiceStub(chan), ready[index]), ())  # type: ignore[arg-type]
            last = 0
            async for batch in tail_events(conn, user_id="", all_users=True, types=(), since=None, options=options):
                now = time.time()
                for event in batch:
                    received[index] += 1
                    if last and event.id != last + 1:
                        out_of_order[index] += 1
                    last = event.id
                    if event.user_id != WARMUP_USER:
                        measured[index] += 1
                        stamp = event.timestamp
                        latencies.append(now - stamp.seconds - stamp.nanos * 1e-9)

    tasks = [asyncio.create_task(tail(i)) for i in range(count)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
    print("ready", flush=True)
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    errors = [repr(task.exception()) for task in done if task.exception() is not None]
    counts = {"received": received, "measured": measured, "out_of_order": out_of_order, "unfinished": len(pending)}
    return counts | {"errors": errors[:3]}, latencies


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="tail.py _worker")
    parser.add_argument("role", choices=("raw-server", "raw-client", "publish", "live-publish", "feed", "tails"))
    parser.add_argument("--address", default="")
    parser.add_argument("--events", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--tails", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result: dict[str, object]
    if args.role == "raw-server":
        asyncio.run(raw_server())
        return 0
    if args.role == "raw-client":
        result = asyncio.run(raw_client(args.address, args.events, args.batch))
    elif args.role == "publish":
        result = asyncio.run(publisher(args.address, args.events))
    elif args.role == "live-publish":
        result = asyncio.run(live_publisher(args.address, args.rate, args.seconds, args.warmup, args.batch))
    elif args.role == "feed":
        feed(args.rate, args.seconds, args.warmup)  # stdout is the events; the publisher reports the count
        return 0
    else:
        result, latencies = asyncio.run(tails(args.address, args.tails, args.events, args.seconds))
        with open(args.out, "wb") as handle:  # doubles, read back by the parent
            latencies.tofile(handle)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps(result | {"cpu": usage.ru_utime + usage.ru_stime}), flush=True)
    return 0


# --- the measurements --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timed:
    seconds: float  # wall time of the client process, spawn to exit
    stream_seconds: float | None  # the stream alone, as the raw client reports it
    client_cpu: float
    server_cpu: float
    client_rss: int


@dataclasses.dataclass
class Results:
    events: int
    raw1_events: int
    publish: dict[str, Any] = dataclasses.field(default_factory=dict)
    rss_after_publish: int = 0
    replay: dict[str, list[Timed]] = dataclasses.field(default_factory=dict)  # kind -> one per round
    verify_run: Timed | None = None  # --json to a file
    human_run: Timed | None = None  # human output to a file
    replay_server_rss: int = 0
    live: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def count_ids(path: pathlib.Path, total: int, label: str) -> None:
    """Every line of ``path`` is an NDJSON event and the ids run 1..total in order."""
    expected = 1
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            head = line[: line.index(",")]  # {"id":N,...: the CLI writes id first
            check(head == f'{{"id":{expected}', f"{label}: line {expected} is {line[:80]!r}")
            expected += 1
    check(expected - 1 == total, f"{label}: {expected - 1} events of {total}")


def replay_cli(served: Served, path: pathlib.Path | None, *, as_json: bool) -> Timed:
    argv = [*STREAMCLI, "--address", served.address]
    if as_json:
        argv.append("--json")
    argv += ["tail", "events", "--all-users", "--since", "1d", "--no-follow"]
    server_cpu = served.cpu()
    run = run_client(argv, stdout=path or pathlib.Path(os.devnull))
    return Timed(run.seconds, None, run.cpu, served.cpu() - server_cpu, run.peak_rss)


def replay_raw(served: Served, total: int, batch: int) -> Timed:
    server_cpu = served.cpu()
    argv = worker_argv("raw-client", "--address", served.address, "--events", str(total), "--batch", str(batch))
    run = run_client(argv)
    result = last_json(run.stdout)
    check(result["events"] == total, f"raw client (batch {batch}) got {result['events']} of {total} events")
    return Timed(run.seconds, float(result["seconds"]), run.cpu, served.cpu() - server_cpu, run.peak_rss)


def measure_replay(tmp: pathlib.Path, results: Results, rounds: int) -> None:
    total = results.events
    with contextlib.ExitStack() as stack:
        raw = stack.enter_context(serve("raw server", worker_argv("raw-server"), tmp / "raw.log"))
        served = stack.enter_context(serve("streamcli serve", streamcli_serve(tmp / "data"), tmp / "serve.log"))
        print(f"publishing {total:,} events through PublishEvents ...", flush=True)
        server_cpu = served.cpu()
        run = run_client(worker_argv("publish", "--address", served.address, "--events", str(total)))
        results.publish = last_json(run.stdout) | {"server_cpu": served.cpu() - server_cpu, "wall": run.seconds}
        check(results.publish["count"] == total, f"published {results.publish['count']} of {total}")
        check(results.publish["first_id"] == 1, "the log was not empty")
        results.rss_after_publish = served.peak_rss()

        print("replay to a file, checked (also warms the page cache) ...", flush=True)
        out = tmp / "replay.ndjson"
        results.verify_run = replay_cli(served, out, as_json=True)
        count_ids(out, total, "streamcli --json tail events")
        out.unlink()

        results.replay = {kind: [] for kind in REPLAY_KINDS}
        for round_ in range(rounds):
            shift = round_ % len(REPLAY_KINDS)
            for kind in (*REPLAY_KINDS[shift:], *REPLAY_KINDS[:shift]):
                print(f"round {round_ + 1}/{rounds}: {kind} ...", flush=True)
                if kind == "raw1":
                    timed = replay_raw(raw, results.raw1_events, 1)
                elif kind == "raw-batched":
                    timed = replay_raw(raw, total, BATCH_RECORDS)
                else:
                    timed = replay_cli(served, None, as_json=True)
                results.replay[kind].append(timed)

        print("replay with the human output to a file ...", flush=True)
        out = tmp / "replay.txt"
        results.human_run = replay_cli(served, out, as_json=False)
        with open(out, "rb") as handle:
            lines = sum(1 for _ in handle)
        check(lines == total, f"human output: {lines} lines for {total} events")
        out.unlink()
        results.replay_server_rss = served.peak_rss()


def read_lines(stream: IO[bytes], into: list[tuple[float, bytes]]) -> None:
    """Note the time every line arrives (the CLI tail flushes each one)."""
    for line in stream:
        into.append((time.time(), line))


@dataclasses.dataclass(frozen=True)
class LiveSetup:
    tails: int
    procs: int
    cli_tails: int
    rate: float
    seconds: float
    warmup: float = 1.0


def live_run(tmp: pathlib.Path, kind: str, batch: int | None, setup: LiveSetup) -> dict[str, Any]:
    """One live run against a fresh server of ``kind`` ("raw" or "streamcli"): the events published ``batch``
    per message on a steady schedule, or (None) by ``streamcli events publish`` fed a line at a time."""
    per = batch or 1
    warm_events = round(setup.warmup * setup.rate / per) * per
    events = round(setup.seconds * setup.rate / per) * per
    expect = warm_events + events  # per tail, warm-up included
    deadline = setup.warmup + setup.seconds + 180.0
    sizes = [setup.tails // setup.procs + (1 if p < setup.tails % setup.procs else 0) for p in range(setup.procs)]
    sizes = [size for size in sizes if size]
    printed: list[list[tuple[float, bytes]]] = [[] for _ in range(setup.cli_tails)]
    label = str(batch) if batch else "cli"
    live: dict[str, Any] = {"kind": kind, "batch": label, "procs": len(sizes), "expect": events}
    name = f"live-{kind}-{label}"
    if kind == "raw":
        server = ("raw server (live)", worker_argv("raw-server"))
    else:
        server = ("streamcli serve (live)", streamcli_serve(tmp / name))
    with contextlib.ExitStack() as stack:
        served = stack.enter_context(serve(*server, tmp / f"{name}.log"))
        log = stack.enter_context(open(tmp / f"{name}-clients.log", "wb"))
        clients_cpu = children_cpu()
        readers = []
        for index in range(setup.cli_tails):
            argv = (*STREAMCLI, "--address", served.address, "--json", "tail", "events", "--all-users")
            argv += ("--since", "1d", "--max", str(expect), "--idle-timeout", "30")
            proc = stack.enter_context(spawn(argv, subprocess.PIPE, log))
            assert proc.stdout is not None
            reader = threading.Thread(target=read_lines, args=(proc.stdout, printed[index]), daemon=True)
            reader.start()
            readers.append((proc, reader))
        workers = []
        for index, size in enumerate(sizes):
            out = tmp / f"{name}-latencies-{index}.bin"
            argv = worker_argv("tails", "--address", served.address, "--tails", str(size), "--events", str(expect))
            argv += ["--seconds", str(deadline), "--out", str(out)]
            workers.append((stack.enter_context(spawn(argv, subprocess.PIPE, log)), out))
        for proc, _ in workers:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                sys.exit(f"a tail worker did not start:\n{(tmp / f'{name}-clients.log').read_text(errors='replace')}")
        print(
            f"live, {server[0]}: {setup.tails} tails in {len(sizes)} processes (+{setup.cli_tails} CLI) ready;"
            f" publishing {setup.rate:g} events/s for {setup.warmup:g} + {setup.seconds:g} s,"
            f" {f'{batch} per message' if batch else 'a line at a time to streamcli events publish'} ...",
            flush=True,
        )
        server_cpu, wall = served.cpu(), time.perf_counter()
        schedule = ["--rate", str(setup.rate), "--seconds", str(setup.seconds), "--warmup", str(setup.warmup)]
        if batch:
            argv = worker_argv("live-publish", "--address", served.address, *schedule, "--batch", str(batch))
            live["publish"] = last_json(run_client(argv).stdout)
        else:
            argv = (*STREAMCLI, "--address", served.address, "--json", "events", "publish")
            publisher = stack.enter_context(spawn(argv, subprocess.PIPE, log, stdin=subprocess.PIPE))
            assert publisher.stdin is not None
            stack.enter_context(spawn(worker_argv("feed", *schedule), publisher.stdin, log))
            publisher.stdin.close()  # the feeder has the pipe: its exit is the end of the input
            assert publisher.stdout is not None
            out = publisher.stdout.read()  # until it exits (the acknowledgement, as JSON)
            check(publisher.wait(30) == 0, f"streamcli events publish exited with {publisher.returncode}")
            live["publish"] = last_json(out.decode()) | {"seconds": time.perf_counter() - wall}
        check(live["publish"]["count"] == expect, f"live publish appended {live['publish']['count']} of {expect}")
        latencies = array.array("d")
        received = measured = out_of_order = unfinished = 0
        tails_cpu = 0.0
        for proc, out in workers:
            stdout, _ = proc.communicate(timeout=deadline + 30)
            result = last_json(stdout.decode())
            if result["errors"]:
                print(f"tail errors: {result['errors']}", file=sys.stderr)
            received += sum(result["received"])
            measured += sum(result["measured"])
            out_of_order += sum(result["out_of_order"])
            unfinished += result["unfinished"]
            tails_cpu += result["cpu"]
            latencies.frombytes(out.read_bytes())
            out.unlink()
        for proc, reader in readers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            reader.join(5)
        live["wall"] = time.perf_counter() - wall
        live["server_cpu"] = served.cpu() - server_cpu
        live["clients_cpu"] = children_cpu() - clients_cpu  # publisher, tail workers and CLI tails, all reaped
        live["tails_cpu"] = tails_cpu
        live["server_rss"] = served.peak_rss()
    live |= {"received": received, "measured": measured, "out_of_order": out_of_order, "unfinished": unfinished}
    live["latencies"] = sorted(latencies)
    cli_latencies: list[float] = []
    for lines in printed:
        for arrived, line in lines:
            record = json.loads(line)
            if record["user_id"] != WARMUP_USER:
                sent = Timestamp()
                sent.FromJsonString(record["timestamp"])
                cli_latencies.append(arrived - sent.ToNanoseconds() / 1e9)
    live["cli_latencies"] = sorted(cli_latencies)
    return live


def measure(tmp: pathlib.Path, args: argparse.Namespace) -> Results:
    results = Results(args.events, min(args.events, args.raw1_events))
    measure_replay(tmp, results, args.rounds)
    setup = LiveSetup(args.tails, args.tail_procs, args.cli_tails, args.rate, args.seconds)
    for batch in [*args.batch, *([None] if args.cli_publisher else [])]:
        for kind in ("raw", "streamcli"):
            results.live.append(live_run(tmp, kind, batch, setup) | {"setup": setup})
    return results


# --- the report --------------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank of an ascending sequence."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def table(columns: Sequence[tuple[str, int]], rows: Sequence[Sequence[str]]) -> None:
    """Columns of negative width are left-aligned."""
    print("  ".join(f"{name:<{-width}}" if width < 0 else f"{name:>{width}}" for name, width in columns))
    print("  ".join("-" * abs(width) for _, width in columns))
    for row in rows:
        print("  ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, (_, w) in zip(row, columns, strict=True)))


def report(results: Results) -> None:
    total = results.events
    publish = results.publish
    print(
        f"\npublish: {total:,} events in {publish['seconds']:.2f} s = {total / publish['seconds']:,.0f} events/s"
        f" (publish_events, {PUBLISH_BATCH} per message, events built on the fly; server CPU"
        f" {publish['server_cpu']:.1f} s); server peak RSS after it {results.rss_after_publish / MB:.1f} MB"
    )
    rounds = len(results.replay["streamcli"])
    print(f"\nreplay of {total:,} events, median of {rounds} rounds (the two runs to a file: one each):\n")
    raw_rate = statistics.median(total / t.seconds for t in results.replay["raw-batched"])
    rows: list[tuple[str, int, list[Timed]]] = [
        ("raw grpc.aio, 1 event per response", results.raw1_events, results.replay["raw1"]),
        (f"raw grpc.aio, {BATCH_RECORDS} per response", total, results.replay["raw-batched"]),
        ("streamcli --json tail events > /dev/null", total, results.replay["streamcli"]),
    ]
    if results.verify_run:
        rows.append(("streamcli --json tail events > file", total, [results.verify_run]))
    if results.human_run:
        rows.append(("streamcli tail events (human) > file", total, [results.human_run]))
    cells = []
    for label, count, samples in rows:
        rates = [count / s.seconds for s in samples]
        rate = statistics.median(rates)
        only = [s.stream_seconds for s in samples if s.stream_seconds is not None]
        cells.append(
            (
                label,
                f"{count:,}",
                f"{rate:,.0f}",
                f"{min(rates):,.0f}",
                f"{max(rates):,.0f}",
                f"{statistics.median(s.seconds for s in samples):.2f}",
                f"{count / statistics.median(only):,.0f}" if only else "-",
                f"{rate / raw_rate:.3f}",
                f"{statistics.median(s.client_cpu for s in samples):.2f}",
                f"{statistics.median(s.server_cpu for s in samples):.2f}",
                f"{max(s.client_rss for s in samples) / MB:.1f}",
            )
        )
    columns = [("what", -42), ("events", 9), ("events/s", 9), ("min", 9), ("max", 9), ("s", 6)]
    columns += [("stream-only ev/s", 16), ("/ raw 500", 9), ("client CPU s", 12), ("server CPU s", 12)]
    columns += [("client peak MB", 14)]
    table(columns, cells)
    print("\nevents/s: the client process's wall time, spawn to exit; stream-only: first read to last event.")
    print(f"streamcli server peak RSS after publishing and all replays: {results.replay_server_rss / MB:.1f} MB")

    setup: LiveSetup = results.live[0]["setup"]
    print(
        f"\nlive: {setup.tails} tails (tail_events in {results.live[0]['procs']} client processes, a TCP connection"
        f" each) + {setup.cli_tails} `streamcli --json tail events` process(es), {setup.rate:g} events/s for"
        f" {setup.seconds:g} s after a warm-up second; latency = receive (or print) time - send time, ms:\n"
    )
    cells = []
    for live in results.live:
        lat, cli = live["latencies"], live["cli_latencies"]
        server = "raw grpc.aio fan-out" if live["kind"] == "raw" else "streamcli serve"
        figures = [f"{percentile(lat, q) * 1e3:.1f}" if lat else "-" for q in (0.5, 0.9, 0.99)]
        figures.append(f"{lat[-1] * 1e3:.1f}" if lat else "-")
        cli_text = f"{percentile(cli, 0.5) * 1e3:.1f} / {percentile(cli, 0.99) * 1e3:.1f}" if cli else "-"
        expected = live["expect"] * setup.tails
        cells.append(
            (
                server,
                str(live["batch"]),
                *figures,
                f"{live['measured']:,} / {expected:,}",
                f"{len(cli):,}" if setup.cli_tails else "-",
                cli_text,
                f"{live['publish']['seconds']:.1f}",
                f"{live['server_cpu']:.1f}",
                f"{live['tails_cpu']:.1f}",
                f"{live['clients_cpu']:.1f}",
                f"{live['wall']:.1f}",
                f"{live['server_rss'] / MB:.1f}",
            )
        )
    columns = [("server", -20), ("ev/msg", 6), ("p50", 8), ("p90", 8), ("p99", 8), ("max", 8)]
    columns += [("delivered / expected", 21), ("printed", 7), ("CLI p50 / p99", 17), ("publish s", 9)]
    columns += [("server CPU s", 12), ("tails CPU s", 11), ("clients CPU s", 13), ("wall s", 6)]
    columns += [("server peak MB", 14)]
    table(columns, cells)
    print(
        "\npublish s: publisher start to the server's acknowledgement (the schedule itself takes "
        f"{setup.warmup + setup.seconds:g} s); tails CPU: the tail worker processes; clients CPU: those, the"
        " publisher and the CLI tails together."
    )
    for live in results.live:
        if live["out_of_order"] or live["unfinished"]:
            print(
                f"{live['kind']} (publisher {live['batch']}): {live['out_of_order']} gaps or reorderings seen,"
                f" {live['unfinished']} tails cut at the deadline"
            )

    replay_rate = statistics.median(total / t.seconds for t in results.replay["streamcli"])
    print(f"\n{'target (issue 4)':<78}  {'measured':>20}  verdict")
    print(f"{'-' * 78}  {'-' * 20}  -------")
    rows_t = [
        ("replay >= 150,000 events/s end to end (--json)", f"{replay_rate:,.0f} events/s", replay_rate >= REPLAY_TARGET)
    ]
    for live in results.live:
        if live["kind"] != "streamcli":
            continue
        lat = live["latencies"]
        p99 = percentile(lat, 0.99) * 1e3 if lat else math.inf
        what = f"{setup.tails} tails, " + ("CLI publish" if live["batch"] == "cli" else f"{live['batch']} ev/msg")
        rows_t.append((f"live p99 <= {P99_TARGET_MS:.0f} ms ({what})", f"{p99:,.1f} ms", p99 <= P99_TARGET_MS))
        printed = live["cli_latencies"]
        if printed:  # the "publish -> printed", by the `streamcli tail events` process(es)
            p99 = percentile(printed, 0.99) * 1e3
            label = f"live p99 <= {P99_TARGET_MS:.0f} ms, printed by the CLI tail ({what})"
            rows_t.append((label, f"{p99:,.1f} ms", p99 <= P99_TARGET_MS))
        complete = live["measured"] == live["expect"] * setup.tails and not live["out_of_order"]
        rows_t.append((f"live: every event to every tail in order ({what})", f"{live['measured']:,} events", complete))
    live_rss = max(live["server_rss"] for live in results.live if live["kind"] == "streamcli")
    rss_text = f"{results.replay_server_rss / MB:.1f}, {live_rss / MB:.1f} MB"
    rss_ok = max(results.replay_server_rss, live_rss) / MB < RSS_LIMIT_MB
    rows_t.append((f"server peak RSS < {RSS_LIMIT_MB:.0f} MB (replay, live)", rss_text, rss_ok))
    for label, measured_text, ok in rows_t:
        print(f"{label:<78}  {measured_text:>20}  {verdict(ok)}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    option = parser.add_argument
    option("--events", type=int, default=1_000_000, help="events stored and replayed (default: %(default)s)")
    option(
        "--raw1-events",
        type=int,
        default=200_000,
        help="events of the raw 1-per-response stream (default: %(default)s)",
    )
    option("--rounds", type=int, default=3, help="timed replay rounds of each kind (default: %(default)s)")
    option("--tails", type=int, default=100, help="concurrent live tails (default: %(default)s)")
    option("--tail-procs", type=int, default=2, help="client processes they run in (default: %(default)s)")
    option("--cli-tails", type=int, default=1, help="streamcli tail processes besides (default: %(default)s)")
    option("--rate", type=float, default=1000.0, help="live events published per second (default: %(default)s)")
    option("--seconds", type=float, default=10.0, help="live run, after a warm-up second (default: %(default)s)")
    option(
        "--batch",
        type=int,
        nargs="+",
        default=[1, 10],
        help="live events per PublishEvents message, one run each (default: 1 10)",
    )
    option(
        "--cli-publisher",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more live run, the events written a line at a time to `streamcli events publish` (default: on)",
    )
    args = parser.parse_args(argv)
    positive = (args.events, args.raw1_events, args.rounds, args.tails, args.tail_procs, *args.batch)
    if min(positive) < 1 or args.cli_tails < 0 or args.rate <= 0 or args.seconds <= 0:
        parser.error("counts, --rate and --seconds must be positive (--cli-tails may be 0)")

    # SIGTERM unwinds like Ctrl-C: every server and client started is stopped, the temporary files deleted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli client: {' '.join(STREAMCLI)}; streamcli from {ROOT_OF_STREAMCLI}")
    load = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-", dir="/tmp") as tmp:
        results = measure(pathlib.Path(tmp), args)
    report(results)
    print(load_line(load, f"; took {time.perf_counter() - start:.0f} s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
