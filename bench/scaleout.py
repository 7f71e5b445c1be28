"""Scale-out on Redis: replicas of ``streamcli serve`` on one Redis against one server on the embedded backend,
the same loads in the same run.

1. chat fan-out: bench/chat.py's load A (``--clients`` clients in one room, ``--rate`` messages/s for
   ``--duration`` s, every delivery's latency), smaller by default. On Redis the clients are split across two
   replicas (half join A, half B: most deliveries cross replicas through Redis); on the embedded backend they
   all join one server. p99 of each, and the ratio Redis / embedded (target <= 2);
2. event replay: ``streamcli --json tail events --all-users --no-follow`` of ``--events`` events published
   through ``PublishEvents`` (bench/tail.py's replay), through a replica on Redis and through the embedded
   server: events/s of each and the ratio Redis / embedded (target >= 0.5);
3. appends/s through the Redis id allocation (``RedisLog.append``: the Lua script that takes the next id and
   XADDs), one record per append: one append at a time, and ``--in-flight`` appends in flight at once.

It starts its own ``redis-server`` (loopback, free port, no persistence) and serve processes; the kinds take
turns, their order reversed every other round (``--rounds``), so whatever else runs falls on both alike.

    python bench/scaleout.py [--clients 40] [--rate 20] [--duration 5] [--client-procs 2] [--events 20000]
                             [--appends 5000] [--in-flight 32] [--rounds 3]

Standard library, grpc, redis (streamcli's dependency) and streamcli only; needs ``redis-server`` on the PATH;
not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import Iterator, Sequence

import chat
import tail
from _common import STREAMCLI, Served, check, free_port, last_json, load_line, run_client, serve, verdict

from streamcli.backends.base import NewRecord
from streamcli.backends.redis_backend import open_redis

CHAT_P99_RATIO_TARGET = 2.0
REPLAY_RATIO_TARGET = 0.5


@contextlib.contextmanager
def redis_server(directory: pathlib.Path) -> Iterator[str]:
    """A ``redis-server`` without persistence on a free loopback port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--daemonize", "no"]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with contextlib.closing(__import__("socket").create_connection(("127.0.0.1", port), 1)) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def serve_argv(data_dir: pathlib.Path, chat_rate: float, backend: str | None = None) -> list[str]:
    argv = [*STREAMCLI, "serve", "--data-dir", str(data_dir), "--address", f"127.0.0.1:{free_port()}"]
    argv += ["--chat-rate", f"{chat_rate:g}"]
    return [*argv, "--backend", backend] if backend else argv


# --- 1. chat fan-out ---------------------------------------------------------------------------------------------


async def open_side(
    stack: contextlib.AsyncExitStack, kind: str, servers: Sequence[Served], args: argparse.Namespace, tmp: pathlib.Path
) -> chat.Side:
    """``args.clients`` clients in one room, split evenly over ``servers``, joined and settled."""
    workers: list[chat.Worker] = []
    first = 0
    for index, served in enumerate(servers):
        count = args.clients // len(servers) + (index < args.clients % len(servers))
        procs = max(1, args.client_procs // len(servers))
        logs = tmp / f"{kind}-{index}"
        workers += await stack.enter_async_context(chat.fleet(served.address, count, procs, 1, "u", logs, first))
        first += count
    side = chat.Side(kind, servers[0], workers)
    print(f"{kind}: joining {args.clients} clients to one room on {len(servers)} server(s) ...", flush=True)
    side.result.join_seconds = await chat.join_all(workers)
    side.result.settle_seconds = await chat.barrier(workers, "settled")
    return side


async def measure_chat(args: argparse.Namespace, tmp: pathlib.Path, redis_url: str) -> dict[str, chat.Fanout]:
    with contextlib.ExitStack() as processes:
        embedded = processes.enter_context(
            serve("embedded", serve_argv(tmp / "embedded", args.chat_rate), tmp / "embedded.log")
        )
        shared = tmp / "shared"
        replicas = [
            processes.enter_context(
                serve(f"replica {n}", serve_argv(shared, args.chat_rate, redis_url), tmp / f"replica-{n}.log")
            )
            for n in "ab"
        ]
        async with contextlib.AsyncExitStack() as stack:
            sides = {
                "embedded": await open_side(stack, "embedded", [embedded], args, tmp),
                "redis": await open_side(stack, "redis", replicas, args, tmp),
            }
            kinds = list(sides)
            for round_ in range(args.rounds):
                print(f"chat round {round_ + 1}/{args.rounds}", flush=True)
                for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                    await chat.load_a(sides[kind], args, f"A{round_}", None)
            for side in sides.values():
                side.result.latencies.sort()
            return {kind: side.result for kind, side in sides.items()}


# --- 2. event replay -------------------------------------------------------------------------------------------


def measure_replay(args: argparse.Namespace, tmp: pathlib.Path, redis_url: str) -> dict[str, list[float]]:
    """events/s of each kind's replays, one per round."""
    rates: dict[str, list[float]] = {"embedded": [], "redis": []}
    with contextlib.ExitStack() as processes:
        servers = {
            "embedded": processes.enter_context(
                serve("embedded", tail.streamcli_serve(tmp / "replay-embedded"), tmp / "replay-embedded.log")
            ),
            "redis": processes.enter_context(
                serve(
                    "replica",
                    [*tail.streamcli_serve(tmp / "replay-shared"), "--backend", redis_url],
                    tmp / "replay-replica.log",
                )
            ),
        }
        for kind, served in servers.items():
            print(f"{kind}: publishing {args.events:,} events ...", flush=True)
            run = run_client(tail.worker_argv("publish", "--address", served.address, "--events", str(args.events)))
            published = last_json(run.stdout)
            check(published["count"] == args.events, f"{kind}: published {published['count']} of {args.events}")
            out = tmp / f"{kind}.ndjson"  # checked once: every id, in order (and the page cache warmed)
            tail.replay_cli(served, out, as_json=True)
            tail.count_ids(out, args.events, f"{kind} replay")
            out.unlink()
        kinds = list(servers)
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else kinds[::-1]:
                print(f"replay round {round_ + 1}/{args.rounds}: {kind} ...", flush=True)
                timed = tail.replay_cli(servers[kind], None, as_json=True)
                rates[kind].append(args.events / timed.seconds)
    return rates


# --- 3. appends through the id allocation ---------------------------------------------------------------------


async def measure_appends(args: argparse.Namespace, tmp: pathlib.Path, redis_url: str) -> dict[str, list[float]]:
    """appends/s, one record each: one at a time, then ``args.in_flight`` at once, per round."""
    backend = open_redis(redis_url, tmp / "appends")
    record = NewRecord("bench", "USER_EVENT_TYPE_LOGIN", b"x" * 100)
    rates: dict[str, list[float]] = {"1 in flight": [], f"{args.in_flight} in flight": []}

    async def one_at_a_time(stream: str) -> None:
        for _ in range(args.appends):
            await backend.log.append(stream, [record])

    async def several(stream: str) -> None:
        async def lane(count: int) -> None:
            for _ in range(count):
                await backend.log.append(stream, [record])

        share = args.appends // args.in_flight
        await asyncio.gather(*(lane(share + (n < args.appends % args.in_flight)) for n in range(args.in_flight)))

    try:
        for round_ in range(args.rounds):
            runs = list(zip(rates, (one_at_a_time, several), strict=True))
            for name, run in runs if round_ % 2 == 0 else runs[::-1]:
                stream = f"bench-{round_}-{name.split()[0]}"
                start = time.perf_counter()
                await run(stream)
                rates[name].append(args.appends / (time.perf_counter() - start))
                bounds = await backend.log.bounds(stream)
                check(bounds.last_id == args.appends, f"{name}: the log ends at id {bounds.last_id}")
    finally:
        await backend.close()
    return rates


# --- the report ------------------------------------------------------------------------------------------------


def report(fan: dict[str, chat.Fanout], replay: dict[str, list[float]], appends: dict[str, list[float]]) -> None:
    print("\nchat fan-out (load A), latency in ms over all rounds:")
    p99 = {kind: chat.percentile(f.latencies, 0.99) for kind, f in fan.items()}
    for kind, f in fan.items():
        delivered = len(f.latencies)
        print(
            f"  {kind:9} p50 {chat.percentile(f.latencies, 0.5):7.1f}  p99 {p99[kind]:7.1f}  "
            f"max {f.latencies[-1] if f.latencies else float('nan'):7.1f}  delivered {delivered}/{f.expected}  "
            f"duplicates {f.duplicates}"
        )
    ratio = p99["redis"] / p99["embedded"] if p99["embedded"] else float("nan")
    ok = ratio <= CHAT_P99_RATIO_TARGET
    print(
        f"  p99 ratio redis (two replicas) / embedded: {ratio:.2f} (target <= {CHAT_P99_RATIO_TARGET:g}): {verdict(ok)}"
    )
    print("\nevent replay (--json tail events --no-follow), events/s per round:")
    for kind, rates in replay.items():
        print(f"  {kind:9} median {statistics.median(rates):10,.0f}  rounds {', '.join(f'{r:,.0f}' for r in rates)}")
    ratio = statistics.median(replay["redis"]) / statistics.median(replay["embedded"])
    ok = ratio >= REPLAY_RATIO_TARGET
    print(f"  ratio redis / embedded: {ratio:.2f} (target >= {REPLAY_RATIO_TARGET:g}): {verdict(ok)}")
    print("\nappends/s through the Redis id allocation (one record each):")
    for name, rates in appends.items():
        print(f"  {name:14} median {statistics.median(rates):10,.0f}  rounds {', '.join(f'{r:,.0f}' for r in rates)}")
    names = list(appends)
    gain = statistics.median(appends[names[1]]) / statistics.median(appends[names[0]])
    print(f"  {names[1]} / 1 in flight: {gain:.2f}")


async def measure(args: argparse.Namespace, tmp: pathlib.Path) -> None:
    with redis_server(tmp) as redis_url:
        fan = await measure_chat(args, tmp, redis_url)
        replay = await asyncio.to_thread(measure_replay, args, tmp, redis_url)
        appends = await measure_appends(args, tmp, redis_url)
    report(fan, replay, appends)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add("--clients", type=int, default=40, help="chat clients in the room (default: %(default)s)")
    add("--rate", type=float, default=20.0, help="chat messages/s, all clients together (default: %(default)s)")
    add("--duration", type=float, default=5.0, help="seconds of chat load per round (default: %(default)s)")
    add("--client-procs", type=int, default=2, help="chat client processes per kind (default: %(default)s)")
    add("--chat-rate", type=float, default=100000.0, help="streamcli serve --chat-rate (default: %(default)s)")
    add("--events", type=int, default=20_000, help="events published, then replayed (default: %(default)s)")
    add("--appends", type=int, default=5_000, help="appends per measurement (default: %(default)s)")
    add("--in-flight", type=int, default=32, help="appends in flight at once (default: %(default)s)")
    add("--rounds", type=int, default=3, help="rounds of every measurement (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.clients < 4 or args.rate <= 0 or args.duration <= 0 or args.rounds < 1 or args.events < 1:
        parser.error("--clients must be >= 4; --rate, --duration, --rounds and --events positive")
    if args.appends < args.in_flight or args.in_flight < 2 or args.client_procs < 2:
        parser.error("--in-flight must be >= 2 and <= --appends; --client-procs >= 2 (one per replica)")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-scaleout-", dir="/tmp") as tmp:
        try:
            asyncio.run(measure(args, pathlib.Path(tmp)))
        except chat.BenchError as exc:
            sys.exit(f"scale-out bench failed: {exc}")
    print(load_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
