"""Chat fan-out of ``streamcli serve``, measured against a raw grpc.aio broadcast server in the same run.

Both servers speak the real ``streaming.v1.StreamingService/Chat`` (``ChatRequest`` / ``ChatResponse``), bind
127.0.0.1 and run in a process of their own:

1. raw: a ``grpc.aio`` server (handler registered with ``grpc.method_handlers_generic_handler``) that relays
   each ``ChatSend`` it receives, from memory, to every stream of the room through one ``asyncio.Queue`` per
   stream: one ``ChatResponse`` per message (what queued up for a stream while its previous write was in flight
   goes out in one, as streamcli sends a backlog), no storage, no checks, no SYSTEM messages -- the stack's
   limit;
2. streamcli: ``streamcli serve --data-dir TMP --address 127.0.0.1:PORT --chat-rate 100000`` (the rate limit
   raised so that the load is not throttled; refused messages are counted, and a warning says so).

The chat clients are ``grpc.aio`` clients, many per process (``python bench/chat.py _worker clients ...``),
each with a channel and TCP connection of its own (``grpc.use_local_subchannel_pool``) and one Chat stream,
speaking the client side of the protocol as ``streamcli chat`` does: a ``ChatJoin`` first (distinct user ids:
the server refuses a second live session of one name; backlog 0, the server's default), then ``ChatSend`` TEXT
messages written from a queue by a sender task, while a reader task reads responses. Every message carries
its send time (``time.time()``) in its content; the driver (this script) steers the client processes over
their stdin and stdout.

The loads:

A. latency: ``--clients`` (200) clients in one room, sending ``--rate`` (50) messages/s in total for
   ``--duration`` (10) s, paced on a shared schedule (open loop, round robin over the clients); every client
   records receive time - send time of every message it receives from others: p50/p90/p99/max in ms over
   all rounds, and delivered against expected (messages sent x (clients - 1));
B. burst: one client sends ``--burst`` (1000) messages as fast as its stream takes them; deliveries/s =
   messages x clients (the sender's own copies included) / (first send to the moment the last client has all
   of them), median over rounds;
C. idle: ``--idle-clients`` (1000) clients joined to ``--idle-rooms`` (10) rooms, doing nothing, on a fresh
   server of each kind; the server's ``VmRSS`` and ``VmHWM`` (``/proc/PID/status``) once the joins have
   settled, and before any client connected.

Both servers of A and B run at once, each with its room of clients joined (``--client-procs`` processes each),
and take turns: ``--rounds`` (3) rounds of A for each kind, then B for each kind, the order of the kinds
reversed every other round, so that whatever else runs on the machine falls on both alike. Joins settle
before anything is measured: on streamcli every join is a SYSTEM message to everyone in the room (200 joins
are some 20,000 deliveries, plus each joiner's backlog), so the driver sends a marker message in every room
and waits until every client has received it (room logs are ordered: whatever came before has been
delivered). The same barrier closes every round of A (after a 1 s grace) before its figures are collected.
CPU time over each load (``/proc/PID/stat``, ``/proc/stat``) is reported as % of one core for the server, its
client processes and all other processes of the machine: on 2 cores the clients and the server compete, a
busy client process adds its own queueing to the latencies, and other work on the machine shows.

Run from anywhere, with the interpreter of the environment streamcli is installed in (Linux only)::

    python bench/chat.py [--clients 200] [--rate 50] [--duration 10] [--burst 1000] [--rounds 3]
                         [--client-procs 2] [--idle-clients 1000] [--idle-rooms 10] [--idle-procs 4]
                         [--chat-rate 100000] [--py-spy DIR]

``--py-spy DIR`` records both servers with py-spy (``--nonblocking``, 100 Hz, raw collapsed stacks) during the
first round of loads A and B into DIR (``raw-latency.txt``, ``streamcli-burst.txt``, ...); it costs the
servers some CPU, so figures of such a run are not for the record.

Standard library, grpc and streamcli only (py-spy only for ``--py-spy``); not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from _common import (
    MB,
    PY,
    ROOT,
    SERVICE,
    STREAMCLI,
    Served,
    clean_env,
    cpu_seconds,
    free_port,
    load_line,
    run_raw_server,
    serve,
    verdict,
)

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as pb_grpc

SCRIPT = pathlib.Path(__file__).resolve()
KINDS = ("raw", "streamcli")
LABELS = {"raw": "raw grpc.aio", "streamcli": "streamcli serve"}
TEXT = pb.CHAT_MESSAGE_TYPE_TEXT
P99_RATIO_TARGET = 2.5
P99_MS_TARGET = 25.0
BURST_RATIO_TARGET = 0.6
RSS_TARGET_MB = 300.0
CPU_COLUMNS = ("server CPU", "clients CPU", "others CPU")
#: Joins a client process has in flight at once.
JOIN_CONCURRENCY = 25
#: Seconds a barrier, a join or a burst may take before the run is declared failed (or the burst incomplete).
PATIENCE = 120.0


# --- processes -------------------------------------------------------------------------------------------------


def server_argv(kind: str, tmp: pathlib.Path, name: str, chat_rate: float) -> list[str]:
    if kind == "raw":
        return worker_argv("raw-server")
    address = f"127.0.0.1:{free_port()}"
    return [*STREAMCLI, "serve", "--data-dir", str(tmp / name), "--address", address, "--chat-rate", f"{chat_rate:g}"]


# --- the workers (each run as `python bench/chat.py _worker ROLE ...`) ---------------------------------------


def worker_argv(role: str, *args: str) -> list[str]:
    return [PY, str(SCRIPT), "_worker", role, *args]


async def raw_server() -> None:
    """grpc.aio from memory: every ChatSend goes to every stream of its room, each through its own queue.

    One ChatResponse per message, shared by the streams; what queued up for a stream while its previous write
    was in flight goes out in one ChatResponse (streamcli, too, sends a session's backlog in one).
    """
    rooms: dict[str, set[asyncio.Queue[pb.ChatResponse | None]]] = {}
    ids = iter(range(1, 1 << 62))

    async def chat(requests: AsyncIterator[pb.ChatRequest], context: Any) -> None:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("action") != "join":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message of a chat stream must be a join")
        assert first is not None
        room, user = first.join.room_id, first.join.user_id
        queue: asyncio.Queue[pb.ChatResponse | None] = asyncio.Queue()
        members = rooms.setdefault(room, set())
        members.add(queue)

        async def receive() -> None:
            async for request in requests:
                if request.WhichOneof("action") == "send":
                    send = request.send
                    message = pb.ChatMessage(
                        id=next(ids),
                        user_id=user,
                        room_id=room,
                        content=send.content,
                        type=send.type,
                        file_id=send.file_id,
                    )
                    message.timestamp.GetCurrentTime()
                    response = pb.ChatResponse(messages=[message])
                    for member in members:
                        member.put_nowait(response)
            queue.put_nowait(None)  # the client half-closed: it left

        receiver = asyncio.create_task(receive())
        try:
            await context.write(pb.ChatResponse())  # joined
            left = False
            while not left and (response := await queue.get()) is not None:
                if not queue.empty():  # more queued up while the last write was in flight: one response for all
                    messages = list(response.messages)
                    while not queue.empty():
                        if (more := queue.get_nowait()) is None:
                            left = True
                            break
                        messages.extend(more.messages)
                    response = pb.ChatResponse(messages=messages)
                await context.write(response)
        finally:
            members.discard(queue)
            receiver.cancel()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Chat": grpc.stream_stream_rpc_method_handler(
                chat,
                request_deserializer=pb.ChatRequest.FromString,
                response_serializer=pb.ChatResponse.SerializeToString,
            )
        },
    )
    await run_raw_server(handler)


class Member:
    """One chat client: a channel (and TCP connection) of its own, one Chat stream, a reader and a sender task."""

    def __init__(self, clients: Clients, address: str, user: str, room: str) -> None:
        self.clients = clients
        self.user = user
        self.room = room
        options = [*transport.client_options(), ("grpc.use_local_subchannel_pool", 1)]
        self.channel = grpc.aio.insecure_channel(address, options=options)
        self.stub = pb_grpc.StreamingServiceStub(self.channel)
        self.outgoing: asyncio.Queue[pb.ChatRequest | asyncio.Future[float]] = asyncio.Queue()
        self.joined = asyncio.Event()
        self.markers: set[str] = set()
        self.seen: dict[str, set[int]] = collections.defaultdict(set)  # tag -> sequence numbers received
        self.last: dict[str, float] = {}  # tag -> when the newest new one arrived
        self.tasks: list[asyncio.Task[None]] = []
        self.call: Any = None

    async def join(self) -> None:
        self.call = self.stub.Chat()
        # backlog 0: the server's default, as `streamcli chat` asks.
        await self.call.write(pb.ChatRequest(join=pb.ChatJoin(room_id=self.room, user_id=self.user)))
        self.tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._send())]
        await self.joined.wait()

    def post(self, tag: str, seq: int | str) -> None:
        content = f"{tag} {seq} {time.time():.6f}"
        self.outgoing.put_nowait(pb.ChatRequest(send=pb.ChatSend(type=TEXT, content=content)))

    async def _send(self) -> None:
        while True:
            item = await self.outgoing.get()
            if isinstance(item, asyncio.Future):
                item.set_result(time.time())  # everything queued before it has been written
            else:
                await self.call.write(item)

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                now = time.time()
                self.joined.set()
                if response.HasField("notice"):
                    self.clients.notices[response.notice.code] += 1
                texts = 0
                for message in response.messages:
                    if message.type == TEXT:
                        self.clients.received(self, message, now)
                        texts += 1
                if texts:
                    self.clients.responses += 1
                    self.clients.texts += texts
            self.clients.failures.append(f"{self.user}: the server ended the stream")
        except grpc.aio.AioRpcError as exc:
            if not self.clients.quitting:
                self.clients.failures.append(f"{self.user}: {exc.code().name} {exc.details()}")
        finally:
            self.joined.set()  # a failed join must not hang the driver (the failure is reported)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.call is not None:
            self.call.cancel()
        await self.channel.close()


class Clients:
    """The chat clients of one worker process, steered by JSON lines on stdin, answering on stdout."""

    def __init__(self, address: str, first: int, count: int, rooms: int, prefix: str) -> None:
        self.members = [
            Member(self, address, f"{prefix}{n}", f"{prefix}room{n % rooms}") for n in range(first, first + count)
        ]
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)  # tag -> seconds, from others
        self.duplicates = 0
        self.responses = self.texts = 0  # responses with TEXT messages, and those messages, since the last collect
        self.first_copy: dict[str, dict[int, float]] = collections.defaultdict(dict)  # tag -> seq -> first arrival
        self.notices: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self.quitting = False
        self.burst_sent: asyncio.Future[float] | None = None

    def received(self, member: Member, message: pb.ChatMessage, now: float) -> None:
        tag, _, rest = message.content.partition(" ")
        seq_text, _, sent = rest.partition(" ")
        if tag == "M":
            member.markers.add(seq_text)
            return
        seen = member.seen[tag]
        seq = int(seq_text)
        if seq in seen:
            self.duplicates += 1
            return
        seen.add(seq)
        member.last[tag] = now
        self.first_copy[tag].setdefault(seq, now)
        if message.user_id != member.user:
            self.latencies[tag].append(now - float(sent))

    async def until(self, done: Any, timeout: float, progress: Any = None, stall: float = 15.0) -> bool:
        """Wait for ``done()``: False after ``timeout`` s, or after ``stall`` s in which ``progress()`` did not move."""
        deadline = time.monotonic() + timeout
        last, moved = None, time.monotonic()
        while not done():
            now = time.monotonic()
            if progress is not None and (current := progress()) != last:
                last, moved = current, now
            if now > deadline or now - moved > stall:
                return False
            await asyncio.sleep(0.05)
        return True

    async def command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        what = cmd["cmd"]
        if what == "join":
            limit = asyncio.Semaphore(JOIN_CONCURRENCY)

            async def join(member: Member) -> None:
                async with limit:
                    await member.join()

            start = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*(join(m) for m in self.members)), PATIENCE)
            return {"seconds": time.perf_counter() - start, "failures": self.failures[:5]}
        if what == "mark":  # a marker in each of cmd["rooms"]; then wait until every client here has it
            token = cmd["token"]
            for room in cmd["rooms"]:
                next(m for m in self.members if m.room == room).post("M", token)
            ok = await self.until(lambda: all(token in m.markers for m in self.members), PATIENCE)
            return {"ok": ok, "missing": sum(token not in m.markers for m in self.members)}
        if what == "pace":  # messages index, index + procs, ... of the shared schedule, round robin over members
            tag, start, rate, index, procs = cmd["tag"], cmd["start"], cmd["rate"], cmd["index"], cmd["procs"]
            sent, late = 0, 0.0
            for k, seq in enumerate(range(index, cmd["total"], procs)):
                due = start + seq / rate
                if (delay := due - time.time()) > 0:
                    await asyncio.sleep(delay)
                late = max(late, time.time() - due)
                self.members[k % len(self.members)].post(tag, seq)
                sent += 1
            return {"sent": sent, "late_ms": late * 1000}
        if what == "burst":  # the first member sends cmd["count"] messages at once
            sender = self.members[0]
            start = time.time()
            for seq in range(cmd["count"]):
                sender.post(cmd["tag"], seq)
            self.burst_sent = asyncio.get_running_loop().create_future()
            sender.outgoing.put_nowait(self.burst_sent)
            return {"start": start}
        if what == "wait":  # until every member has cmd["count"] messages of cmd["tag"]
            tag, count = cmd["tag"], cmd["count"]
            ok = await self.until(
                lambda: all(len(m.seen[tag]) >= count for m in self.members),
                cmd["timeout"],
                progress=lambda: sum(len(m.seen[tag]) for m in self.members),
            )
            return {"ok": ok}
        if what == "collect":
            tag = cmd["tag"]
            batching, self.responses, self.texts = (self.responses, self.texts), 0, 0
            sent_at = self.burst_sent.result() if self.burst_sent is not None and self.burst_sent.done() else None
            return {
                "latencies": self.latencies.pop(tag, []),
                "counts": [len(m.seen[tag]) for m in self.members],
                "last": max((m.last.get(tag, 0.0) for m in self.members), default=0.0),
                "first_copies": self.first_copy.pop(tag, {}),
                "batching": batching,
                "burst_sent": sent_at,
                "duplicates": self.duplicates,
                "notices": dict(self.notices),
                "failures": self.failures[:5],
            }
        if what == "quit":
            self.quitting = True
            await asyncio.gather(*(m.close() for m in self.members))
            return {"bye": True}
        raise ValueError(f"unknown command {what!r}")


async def clients_main(address: str, first: int, count: int, rooms: int, prefix: str) -> None:
    clients = Clients(address, first, count, rooms, prefix)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        print(json.dumps(await clients.command(cmd)), flush=True)
        if cmd["cmd"] == "quit":
            return


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="chat.py _worker")
    parser.add_argument("role", choices=("raw-server", "clients"))
    parser.add_argument("--address", default="")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rooms", type=int, default=1)
    parser.add_argument("--prefix", default="u")
    args = parser.parse_args(argv)
    if args.role == "raw-server":
        asyncio.run(raw_server())
    else:
        asyncio.run(clients_main(args.address, args.first, args.count, args.rooms, args.prefix))
    return 0


# --- the measurements --------------------------------------------------------------------------------------------


class BenchError(Exception):
    """The run cannot go on; what happened is in the message."""


def fail(what: str) -> None:
    raise BenchError(what)


class Worker:
    """A client process of the driver."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str, log_path: pathlib.Path, rooms: set[str]) -> None:
        self.proc = proc
        self.label = label
        self.log_path = log_path
        self.rooms = rooms

    async def ask(self, cmd: dict[str, Any], timeout: float = PATIENCE + 30) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        except (TimeoutError, ConnectionError):
            line = b""
        if not line:
            fail(f"{self.label} gave no answer to {cmd['cmd']}:\n{self.log_path.read_text(errors='replace')[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("failures"):
            fail(f"{self.label}: {answer['failures']}")
        return answer


def log_file(path: pathlib.Path) -> Any:
    """``path`` opened for a child process's stderr (a tiny local file: no need to leave the loop for it)."""
    return open(path, "wb")


@contextlib.asynccontextmanager
async def fleet(
    address: str, clients: int, procs: int, rooms: int, prefix: str, logs: pathlib.Path, first: int = 0
) -> AsyncIterator[list[Worker]]:
    """``procs`` client processes with ``clients`` members between them (user ids ``prefix`` + n for n from
    ``first``, rooms ``prefix`` + "room" + n % ``rooms``), logging to ``logs``-clients-N.log; killed when the
    block ends. Two fleets with one prefix, the second's ``first`` after the first's members, share rooms."""
    workers: list[Worker] = []
    try:
        for index in range(procs):
            count = clients // procs + (index < clients % procs)
            log_path = logs.with_name(f"{logs.name}-clients-{index}.log")
            argv = worker_argv(
                "clients",
                "--address",
                address,
                "--first",
                str(first),
                "--count",
                str(count),
                "--rooms",
                str(rooms),
                "--prefix",
                prefix,
            )
            with log_file(log_path) as log:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    cwd=ROOT,
                    env=clean_env(),
                    limit=1 << 26,  # a collect answer carries every latency measured: megabytes of JSON
                )
            members = {f"{prefix}room{n % rooms}" for n in range(first, first + count)}
            workers.append(Worker(proc, f"client process {logs.name}-{index}", log_path, members))
            first += count
        yield workers
        await asyncio.gather(*(w.ask({"cmd": "quit"}, 30) for w in workers))
        with contextlib.suppress(asyncio.TimeoutError):  # they exit once they have said goodbye
            await asyncio.wait_for(asyncio.gather(*(w.proc.wait() for w in workers)), 10)
    finally:
        for worker in workers:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                # Bounded: asyncio waits for the pipes to close too, and a reader paused on a full buffer never does.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(worker.proc.wait(), 10)


async def join_all(workers: list[Worker]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(w.ask({"cmd": "join"}) for w in workers))
    return time.perf_counter() - start


async def barrier(workers: list[Worker], token: str) -> float:
    """A marker in every room (sent by the first worker with a member there); wait until every client has it."""
    start = time.perf_counter()
    senders: dict[str, Worker] = {}
    for worker in workers:
        for room in sorted(worker.rooms):
            senders.setdefault(room, worker)
    answers = await asyncio.gather(
        *(w.ask({"cmd": "mark", "token": token, "rooms": [r for r, s in senders.items() if s is w]}) for w in workers)
    )
    if not all(a["ok"] for a in answers):
        fail(f"marker {token} did not reach {sum(a['missing'] for a in answers)} clients in {PATIENCE:.0f} s")
    return time.perf_counter() - start


def machine_busy_seconds() -> float:
    """CPU time all processes of the machine have used (``/proc/stat``: everything but idle and iowait)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU time of the server, of the client processes and of everything else over a stretch of wall time."""

    def __init__(self, server: int, clients: Sequence[int]) -> None:
        self.pids = (server, *clients, os.getpid())
        self.start = time.perf_counter()
        self.begin = [cpu_seconds(pid) for pid in self.pids]
        self.machine = machine_busy_seconds()

    def read(self) -> tuple[float, float, float]:
        """(server, all clients, other processes) as % of one core since the meter was made."""
        wall = time.perf_counter() - self.start
        used = [cpu_seconds(pid) - before for pid, before in zip(self.pids, self.begin, strict=True)]
        others = machine_busy_seconds() - self.machine - sum(used)
        return 100 * used[0] / wall, 100 * sum(used[1:-1]) / wall, max(0.0, 100 * others / wall)


@contextlib.contextmanager
def profiled(pid: int, out: pathlib.Path | None) -> Iterator[None]:
    """py-spy record of ``pid`` while the block runs (nothing when ``out`` is None)."""
    if out is None:
        yield
        return
    spy = shutil.which("py-spy", path=str(pathlib.Path(PY).parent)) or "py-spy"
    argv = [spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "100", "--format", "raw", "-o", str(out)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # attached
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


@dataclasses.dataclass
class Burst:
    """One round of load B."""

    deliveries: int
    expected: int
    seconds: float  # first send to the moment the last client had them all
    sent_seconds: float  # first send to the sender's last write done
    in_seconds: float  # first send to the first copy of the last message at a client
    per_response: float  # messages per response the clients got
    complete: bool
    cpu: tuple[float, float, float]

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds


@dataclasses.dataclass
class Fanout:
    """Loads A and B on one server, over all rounds."""

    join_seconds: float = 0.0
    settle_seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)  # ms, every round's
    round_p99: list[float] = dataclasses.field(default_factory=list)  # ms
    sent: int = 0
    send_seconds: float = 0.0
    late_ms: float = 0.0
    expected: int = 0
    cpu_a: list[tuple[float, float, float]] = dataclasses.field(default_factory=list)
    bursts: list[Burst] = dataclasses.field(default_factory=list)
    duplicates: int = 0
    notices: dict[str, int] = dataclasses.field(default_factory=dict)
    memory: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Side:
    """A server of one kind with its room of clients."""

    kind: str
    served: Served
    workers: list[Worker]
    result: Fanout = dataclasses.field(default_factory=Fanout)

    def meter(self) -> CpuMeter:
        return CpuMeter(self.served.process.pid, [w.proc.pid for w in self.workers])

    async def collect(self, tag: str) -> list[dict[str, Any]]:
        collected = await asyncio.gather(*(w.ask({"cmd": "collect", "tag": tag}) for w in self.workers))
        notices: collections.Counter[str] = collections.Counter()
        for c in collected:
            notices.update(c["notices"])
        self.result.notices = dict(notices)  # the workers count from the start: the latest answer has them all
        self.result.duplicates = sum(c["duplicates"] for c in collected)
        return collected


async def open_side(stack: contextlib.AsyncExitStack, kind: str, args: argparse.Namespace, tmp: pathlib.Path) -> Side:
    """Start a server of ``kind``, its client processes, join them all to one room and let the joins settle."""
    argv = server_argv(kind, tmp, f"{kind}-data", args.chat_rate)
    served = stack.enter_context(serve(LABELS[kind], argv, tmp / f"{kind}-server.log"))
    workers = await stack.enter_async_context(
        fleet(served.address, args.clients, args.client_procs, 1, "u", tmp / kind)
    )
    side = Side(kind, served, workers)
    print(f"{kind}: joining {args.clients} clients to one room ...", flush=True)
    side.result.join_seconds = await join_all(workers)
    side.result.settle_seconds = await barrier(workers, "settled")
    return side


async def load_a(side: Side, args: argparse.Namespace, tag: str, spy: pathlib.Path | None) -> None:
    """Messages at ``args.rate`` for ``args.duration`` s on a shared schedule; every latency seen by the clients."""
    result, workers = side.result, side.workers
    total = round(args.rate * args.duration)
    print(f"{side.kind}: load A, {args.rate:g} messages/s for {args.duration:g} s ...", flush=True)
    with profiled(side.served.process.pid, spy):
        meter = side.meter()
        start = time.time() + 1.0
        cmd = {"cmd": "pace", "tag": tag, "start": start, "rate": args.rate, "total": total}
        answers = await asyncio.gather(
            *(w.ask({**cmd, "index": i, "procs": len(workers)}) for i, w in enumerate(workers))
        )
        result.send_seconds += time.time() - start
        result.cpu_a.append(meter.read())
    sent = sum(a["sent"] for a in answers)
    result.sent += sent
    result.late_ms = max(result.late_ms, *(a["late_ms"] for a in answers))
    result.expected += sent * (args.clients - 1)
    await asyncio.sleep(1.0)  # then a marker behind every message of this round closes it
    await barrier(workers, f"{tag}-done")
    latencies = sorted(1000 * x for c in await side.collect(tag) for x in c["latencies"])
    result.round_p99.append(percentile(latencies, 0.99))
    result.latencies.extend(latencies)


async def load_b(side: Side, args: argparse.Namespace, tag: str, spy: pathlib.Path | None) -> None:
    """One client sends ``args.burst`` messages at once; until every client has them all."""
    workers = side.workers
    print(f"{side.kind}: load B, a burst of {args.burst} messages ...", flush=True)
    with profiled(side.served.process.pid, spy):
        meter = side.meter()
        start = (await workers[0].ask({"cmd": "burst", "tag": tag, "count": args.burst}))["start"]
        cmd = {"cmd": "wait", "tag": tag, "count": args.burst, "timeout": PATIENCE}
        waited = await asyncio.gather(*(w.ask(cmd) for w in workers))
        cpu = meter.read()
    collected = await side.collect(tag)
    first: dict[str, float] = {}
    for c in collected:
        for seq, when in c["first_copies"].items():
            first[seq] = min(first.get(seq, math.inf), when)
    side.result.bursts.append(
        Burst(
            deliveries=sum(sum(c["counts"]) for c in collected),
            expected=args.burst * args.clients,
            seconds=max(c["last"] for c in collected) - start,
            sent_seconds=(collected[0]["burst_sent"] or math.nan) - start,
            in_seconds=max(first.values(), default=math.nan) - start,
            complete=all(a["ok"] for a in waited),
            per_response=sum(c["batching"][1] for c in collected) / max(1, sum(c["batching"][0] for c in collected)),
            cpu=cpu,
        )
    )


async def measure_fanout(args: argparse.Namespace, tmp: pathlib.Path) -> dict[str, Fanout]:
    """Both servers and their rooms at once; rounds of A then B, alternating which kind goes first."""
    async with contextlib.AsyncExitStack() as stack:
        sides = {kind: await open_side(stack, kind, args, tmp) for kind in KINDS}
        for round_ in range(args.rounds):
            order = KINDS if round_ % 2 == 0 else KINDS[::-1]
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for kind in order:
                spy = args.py_spy / f"{kind}-latency.txt" if args.py_spy and round_ == 0 else None
                await load_a(sides[kind], args, f"A{round_}", spy)
            for kind in order:
                spy = args.py_spy / f"{kind}-burst.txt" if args.py_spy and round_ == 0 else None
                await load_b(sides[kind], args, f"B{round_}", spy)
        for side in sides.values():
            side.result.latencies.sort()
            side.result.memory = side.served.memory()
        return {kind: side.result for kind, side in sides.items()}


@dataclasses.dataclass
class Idle:
    """Load C on a fresh server."""

    fresh: dict[str, int]  # VmRSS, VmHWM before any client connected
    idle: dict[str, int]  # with every client joined and settled
    join_seconds: float
    settle_seconds: float


async def measure_idle(kind: str, args: argparse.Namespace, tmp: pathlib.Path) -> Idle:
    argv = server_argv(kind, tmp, f"{kind}-idle-data", args.chat_rate)
    with serve(f"{LABELS[kind]} (idle)", argv, tmp / f"{kind}-idle-server.log") as served:
        await asyncio.sleep(1.0)
        fresh = served.memory()
        n, rooms = args.idle_clients, args.idle_rooms
        async with fleet(served.address, n, args.idle_procs, rooms, "i", tmp / f"{kind}-idle") as workers:
            print(f"{kind}: load C, joining {n} idle clients to {rooms} rooms ...", flush=True)
            join_seconds = await join_all(workers)
            settle_seconds = await barrier(workers, "settled")
            await asyncio.sleep(2.0)
            idle = served.memory()
    return Idle(fresh, idle, join_seconds, settle_seconds)


# --- the report --------------------------------------------------------------------------------------------------


def table(rows: Sequence[Sequence[str]], right: int = 1) -> None:
    """Rows of cells (the first row is the header); columns from ``right`` on are right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < right else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    print(line(rows[0]))
    print("  ".join("-" * w for w in widths))
    for row in rows[1:]:
        print(line(row))


def report_idle(args: argparse.Namespace, idle: dict[str, Idle]) -> None:
    print(
        f"\nload C (idle): {args.idle_clients} clients joined to {args.idle_rooms} rooms, then idle; server memory:\n"
    )
    rows = [["server", "fresh VmRSS MB", "idle VmRSS MB", "idle VmHWM MB", "per client kB", "join s", "settle s"]]
    for kind, i in idle.items():
        per_client = (i.idle["VmRSS"] - i.fresh["VmRSS"]) / args.idle_clients / 1000
        rows.append(
            [
                LABELS[kind],
                f"{i.fresh['VmRSS'] / MB:.1f}",
                f"{i.idle['VmRSS'] / MB:.1f}",
                f"{i.idle['VmHWM'] / MB:.1f}",
                f"{per_client:.1f}",
                f"{i.join_seconds:.1f}",
                f"{i.settle_seconds:.1f}",
            ]
        )
    table(rows)


def mean_cpu(samples: Sequence[tuple[float, float, float]]) -> list[str]:
    return [f"{statistics.fmean(s[i] for s in samples):.0f}%" for i in range(3)]


def burst_rate(f: Fanout) -> float:
    """Median deliveries/s of the rounds of load B (0 if one of them did not complete)."""
    return statistics.median(b.rate for b in f.bursts) if all(b.complete for b in f.bursts) else 0.0


def report(args: argparse.Namespace, fan: dict[str, Fanout], idle: dict[str, Idle]) -> None:
    procs, rounds = args.client_procs, args.rounds
    print(
        f"\nload A (latency): {args.clients} clients in one room ({procs} client processes), {args.rate:g} messages/s"
        f" in total for {args.duration:g} s, {rounds} rounds; receive - send of every message a client gets from the"
        " others, all rounds together:\n"
    )
    head = ["server", "sent", "msg/s", "expected", "delivered", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    rows = [[*head, "p99 per round", "others per round", *CPU_COLUMNS]]
    for kind, f in fan.items():
        lat = f.latencies
        rows.append(
            [
                LABELS[kind],
                str(f.sent),
                f"{f.sent / f.send_seconds:.1f}",
                str(f.expected),
                str(len(lat)),
                *(f"{percentile(lat, q):.1f}" for q in (0.5, 0.9, 0.99)),
                f"{lat[-1] if lat else math.nan:.1f}",
                " ".join(f"{x:.1f}" for x in f.round_p99),
                " ".join(f"{c[2]:.0f}%" for c in f.cpu_a),
                *mean_cpu(f.cpu_a),
            ]
        )
    table(rows)
    print(
        f"(CPU: % of one core while sending, mean of the rounds: the server, its {procs} client processes, all other"
        f" processes of the machine; it has {os.cpu_count()} cores)"
    )
    late = ", ".join(f"{LABELS[k]} {f.late_ms:.1f} ms" for k, f in fan.items())
    print(f"largest delay of a send behind its schedule: {late}")

    print(
        f"\nload B (burst): one client sends {args.burst} messages at once to the {args.clients}-client room;"
        f" median of {rounds} rounds:\n"
    )
    rows = [["server", "deliveries", "deliveries/s", "min", "max", "s", "sent s", "all in s", "msgs/response"]]
    rows[0].extend(CPU_COLUMNS)
    for kind, f in fan.items():
        bursts = f.bursts
        complete = all(b.complete for b in bursts)
        rows.append(
            [
                LABELS[kind] + ("" if complete else " (INCOMPLETE)"),
                f"{sum(b.deliveries for b in bursts)}/{sum(b.expected for b in bursts)}",
                f"{statistics.median(b.rate for b in bursts):.0f}",
                f"{min(b.rate for b in bursts):.0f}",
                f"{max(b.rate for b in bursts):.0f}",
                f"{statistics.median(b.seconds for b in bursts):.2f}",
                f"{statistics.median(b.sent_seconds for b in bursts):.2f}",
                f"{statistics.median(b.in_seconds for b in bursts):.2f}",
                f"{statistics.fmean(b.per_response for b in bursts):.2f}",
                *mean_cpu([b.cpu for b in bursts]),
            ]
        )
    table(rows)
    print(
        f"(deliveries/s: {args.burst} x {args.clients} / s; s: first send to the moment the last client had them all;"
        " sent: to the sender's last write done; all in: to the first copy of the last message at any client;"
        " msgs/response: chat messages per ChatResponse the clients read)"
    )
    for kind, f in fan.items():
        joins = f"{f.join_seconds:.1f} s to join, {f.settle_seconds:.1f} s to settle"
        memory = f"VmRSS {f.memory['VmRSS'] / MB:.1f} MB, VmHWM {f.memory['VmHWM'] / MB:.1f} MB"
        refused = ", ".join(f"{n} {code}" for code, n in f.notices.items()) or "none"
        print(f"{LABELS[kind]}: {joins}; after A and B {memory}; notices {refused}; duplicates {f.duplicates}")
        if f.notices.get("RESOURCE_EXHAUSTED"):
            print(f"WARNING: {LABELS[kind]} refused messages over its rate limit: rerun with a higher --chat-rate")

    if idle:
        report_idle(args, idle)

    raw, ours = fan["raw"], fan["streamcli"]
    p99_raw, p99_ours = percentile(raw.latencies, 0.99), percentile(ours.latencies, 0.99)
    ratio = p99_ours / p99_raw
    burst = burst_rate(ours) / burst_rate(raw)
    rows = [
        ["target (issue 5)", "measured", "verdict"],
        [
            f"p99 latency <= {P99_RATIO_TARGET:g}x raw",
            f"streamcli/raw {ratio:.2f}x",
            verdict(ratio <= P99_RATIO_TARGET),
        ],
        [f"p99 latency <= {P99_MS_TARGET:g} ms", f"{p99_ours:.1f} ms", verdict(p99_ours <= P99_MS_TARGET)],
        [
            f"burst deliveries/s >= {BURST_RATIO_TARGET:.0%} of raw",
            f"streamcli/raw {burst:.2f}",
            verdict(burst >= BURST_RATIO_TARGET),
        ],
        [
            "(all messages of load A delivered)",
            f"{len(ours.latencies)}/{ours.expected}",
            verdict(len(ours.latencies) == ours.expected),
        ],
    ]
    if idle:
        rss = idle["streamcli"].idle["VmRSS"] / MB
        label = f"RSS with {args.idle_clients} idle clients <= {RSS_TARGET_MB:g} MB"
        rows.insert(4, [label, f"{rss:.1f} MB", verdict(rss <= RSS_TARGET_MB)])
    print()
    table(rows)


async def measure(args: argparse.Namespace, tmp: pathlib.Path) -> None:
    fan = await measure_fanout(args, tmp)
    idle = {kind: await measure_idle(kind, args, tmp) for kind in KINDS} if args.idle_clients else {}
    report(args, fan, idle)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--clients", type=int, default=200, help="clients in the room of loads A and B (default: %(default)s)")
    add("--rate", type=float, default=50.0, help="messages/s of load A, all clients together (default: %(default)s)")
    add("--duration", type=float, default=10.0, help="seconds of load A (default: %(default)s)")
    add("--burst", type=int, default=1000, help="messages of load B (default: %(default)s)")
    add("--rounds", type=int, default=3, help="rounds of A then B, each kind in turn (default: %(default)s)")
    add("--client-procs", type=int, default=2, help="client processes of loads A and B (default: %(default)s)")
    add("--idle-clients", type=int, default=1000, help="idle clients of load C; 0 skips it (default: %(default)s)")
    add("--idle-rooms", type=int, default=10, help="rooms of load C (default: %(default)s)")
    add("--idle-procs", type=int, default=4, help="client processes of load C (default: %(default)s)")
    add("--chat-rate", type=float, default=100000.0, help="streamcli serve --chat-rate (default: %(default)s)")
    add("--py-spy", type=pathlib.Path, help="record the servers during loads A and B into this directory")
    args = parser.parse_args(argv)
    if (
        args.clients < 2
        or args.rate <= 0
        or args.duration <= 0
        or args.burst < 1
        or args.idle_rooms < 1
        or args.rounds < 1
    ):
        parser.error("--clients must be >= 2; --rate, --duration, --burst, --rounds and --idle-rooms positive")
    if not 1 <= args.client_procs <= args.clients or (
        args.idle_clients and not 1 <= args.idle_procs <= args.idle_clients
    ):
        parser.error("--client-procs and --idle-procs must be between 1 and the number of clients")
    if args.py_spy:
        args.py_spy.mkdir(parents=True, exist_ok=True)

    # SIGTERM unwinds like Ctrl-C: every server and client process started is stopped, the temporary files deleted.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli server: {' '.join(STREAMCLI)} serve --chat-rate {args.chat_rate:g}")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-chat-", dir="/tmp") as tmp:
        try:
            asyncio.run(measure(args, pathlib.Path(tmp)))
        except BenchError as exc:
            sys.exit(f"chat bench failed: {exc}")
    print(load_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
