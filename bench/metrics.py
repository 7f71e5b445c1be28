"""Metric ingest: samples/s through `streamcli metrics push` of a 1,000,000-line NDJSON file, against its limit.

The limit is measured in the same run: the slower of

* the transport: a raw grpc.aio client stream of the same samples, in pre-built CollectMetricsRequest messages
  of 5,000 (as `metrics push` sends them), into a raw grpc.aio server that decodes them and counts (no per-sample work);
* the server's own per-sample work, done directly (no gRPC): ``MetricService``'s series lookup and sketch
  update (``_take``) over the same decoded messages, and the merge into the store at the end (``_flush``).

Target: end to end at least 0.5 of that limit. Also: the server's RSS while 10,000 series are live (5 streams
of 2,000 series each, held open), target < 150 MB. Every run verifies what the server counted.

    python bench/metrics.py [--samples N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import numpy as np
from _common import (
    MB,
    PY,
    SERVICE,
    STREAMCLI,
    check,
    clean_env,
    last_json,
    load_line,
    run_client,
    run_raw_server,
    serve,
)

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

ROUTES = 10  # series of the timed runs (route label)
LIVE_STREAMS, LIVE_SERIES = 5, 2000  # the memory run: 10,000 live series
MESSAGE = 5000  # samples per message, as `metrics push` sends them (MESSAGE_SAMPLES)


def values(count: int) -> list[float]:
    return np.random.default_rng(7).lognormal(0.0, 1.0, count).tolist()  # type: ignore[no-any-return]


def write_input(path: pathlib.Path, count: int) -> None:
    with open(path, "w") as out:
        for n, value in enumerate(values(count)):
            out.write(json.dumps({"name": "bench.latency", "value": value, "labels": {"route": f"/r{n % ROUTES}"}}))
            out.write("\n")


def messages(count: int) -> list[pb.CollectMetricsRequest]:
    samples = [
        pb.MetricData(name="bench.latency", value=v, labels={"route": f"/r{n % ROUTES}"})
        for n, v in enumerate(values(count))
    ]
    return [pb.CollectMetricsRequest(metrics=samples[i : i + MESSAGE]) for i in range(0, count, MESSAGE)]


# --- workers (separate processes, so that each is measured alone) ------------------------------------------------


async def raw_server() -> None:
    async def collect(requests: AsyncIterator[pb.CollectMetricsRequest], context: Any) -> pb.CollectMetricsResponse:
        received = 0
        async for request in requests:
            received += len(request.metrics)
        return pb.CollectMetricsResponse(metrics_received=received)

    handler = grpc.stream_unary_rpc_method_handler(
        collect,
        request_deserializer=pb.CollectMetricsRequest.FromString,
        response_serializer=pb.CollectMetricsResponse.SerializeToString,
    )
    await run_raw_server(grpc.method_handlers_generic_handler(SERVICE, {"CollectMetrics": handler}))


async def raw_client(address: str, count: int) -> dict[str, object]:
    from streamcli.transport import client_options

    prebuilt = messages(count)
    async with grpc.aio.insecure_channel(address, options=client_options()) as channel:
        call = channel.stream_unary(
            f"/{SERVICE}/CollectMetrics",
            request_serializer=pb.CollectMetricsRequest.SerializeToString,
            response_deserializer=pb.CollectMetricsResponse.FromString,
        )
        start = time.perf_counter()
        reply = await call(iter(prebuilt))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "received": reply.metrics_received}


async def server_work(data_dir: pathlib.Path, count: int) -> dict[str, object]:
    from streamcli.backends.sqlite import SqliteStore
    from streamcli.services.metrics import MetricService, _Stream

    decoded = [pb.CollectMetricsRequest.FromString(m.SerializeToString()) for m in messages(count)]
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(data_dir / "work.db")
    try:
        service = MetricService(store)
        await service.load()
        stream = _Stream("", "", 0, 100)
        start = time.perf_counter()
        for request in decoded:
            service._take(stream, request)
        await service._flush(stream)
        seconds = time.perf_counter() - start
    finally:
        await store.close()
    return {"seconds": seconds, "accepted": stream.response.metrics_accepted}


async def live_series(address: str) -> None:
    """Hold 5 streams open, each having sent 20 samples to each of its 2,000 series; say "ready", end them when
    stdin closes."""
    from streamcli.transport import client_options

    rng = np.random.default_rng(3)
    async with grpc.aio.insecure_channel(address, options=client_options()) as channel:
        stub = channel.stream_unary(
            f"/{SERVICE}/CollectMetrics",
            request_serializer=pb.CollectMetricsRequest.SerializeToString,
            response_deserializer=pb.CollectMetricsResponse.FromString,
        )
        calls = [stub() for _ in range(LIVE_STREAMS)]
        for n, call in enumerate(calls):
            for _ in range(20):
                samples = [
                    pb.MetricData(name="live", value=v, labels={"stream": str(n), "series": str(s)})
                    for s, v in enumerate(rng.lognormal(0.0, 1.0, LIVE_SERIES).tolist())
                ]
                await call.write(pb.CollectMetricsRequest(metrics=samples))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        for call in calls:
            await call.done_writing()
        replies = [await call for call in calls]
    print(json.dumps({"series": sum(len(r.summaries) for r in replies)}), flush=True)


def worker_main(argv: Sequence[str]) -> int:
    role, *rest = argv
    if role == "raw-server":
        asyncio.run(raw_server())
    elif role == "raw-client":
        print(json.dumps(asyncio.run(raw_client(rest[0], int(rest[1])))))
    elif role == "server-work":
        print(json.dumps(asyncio.run(server_work(pathlib.Path(rest[0]), int(rest[1])))))
    elif role == "live-series":
        asyncio.run(live_series(rest[0]))
    return 0


def worker(*args: str) -> list[str]:
    return [PY, __file__, "_worker", *args]


# --- the measurements ----------------------------------------------------------------------------------------------


def measure(tmp: pathlib.Path, count: int, rounds: int) -> dict[str, Any]:
    source = tmp / "samples.ndjson"
    write_input(source, count)
    figures: dict[str, list[float]] = {"push": [], "raw": [], "work": []}
    serve_argv = [*STREAMCLI, "serve", "--address", "127.0.0.1:0"]
    with serve("raw server", worker("raw-server"), tmp / "raw.log") as raw:
        for n in range(rounds):
            result = last_json(run_client(worker("raw-client", raw.address, str(count))).stdout)
            check(result["received"] == count, "the raw server received every sample")
            figures["raw"].append(count / result["seconds"])
            work = last_json(run_client(worker("server-work", str(tmp / f"work{n}"), str(count))).stdout)
            check(work["accepted"] == count, "the server's work took every sample")
            figures["work"].append(count / work["seconds"])
    for n in range(rounds):
        (tmp / f"data{n}").mkdir()
        with serve("streamcli serve", [*serve_argv, "--data-dir", str(tmp / f"data{n}")], tmp / "serve.log") as srv:
            run = run_client([*STREAMCLI, "--address", srv.address, "--json", "metrics", "push", str(source)])
            result = json.loads(run.stdout)
            check(result["accepted"] == count, "streamcli push: every sample accepted")
            check(sum(s["count"] for s in result["series"]) == count, "the series count every sample")
            figures["push"].append(count / run.seconds)
    (tmp / "live").mkdir()
    with serve("streamcli serve", [*serve_argv, "--data-dir", str(tmp / "live")], tmp / "live.log") as srv:
        idle = srv.memory()["VmRSS"]
        holder = subprocess.Popen(
            worker("live-series", srv.address),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        assert holder.stdin is not None and holder.stdout is not None
        check(holder.stdout.readline().strip() == "ready", "the live streams were sent")
        live = srv.memory()
        holder.stdin.close()
        check(json.loads(holder.stdout.readline())["series"] == LIVE_STREAMS * LIVE_SERIES, "10,000 live series")
        holder.wait(60)
        after = srv.memory()
    return {**figures, "idle_rss": idle, "live_rss": live["VmRSS"], "peak_rss": after["VmHWM"]}


def report(figures: dict[str, Any], count: int) -> None:
    def best(name: str) -> float:
        return max(figures[name])

    transport, work, push = best("raw"), best("work"), best("push")
    limit = min(transport, work)
    print(f"\n{count:,} samples, best of {len(figures['push'])} rounds (samples/s):")
    print(f"  raw grpc.aio client stream, pre-built messages: {transport:12,.0f}")
    print(f"  server's per-sample work, no gRPC:              {work:12,.0f}")
    print(f"  limit (the slower):                             {limit:12,.0f}")
    ratio = push / limit
    print(f"  streamcli metrics push (end to end):            {push:12,.0f}  = {ratio:.2f} of the limit")
    print(f"  target >= 0.5 of the limit: {'PASS' if ratio >= 0.5 else 'MISS'}")
    print(f"  all rounds: push {[round(x) for x in figures['push']]}, raw {[round(x) for x in figures['raw']]}, ")
    print(f"              work {[round(x) for x in figures['work']]}")
    live, peak = figures["live_rss"] / MB, figures["peak_rss"] / MB
    print(f"\nserver RSS: idle {figures['idle_rss'] / MB:.1f} MB; 10,000 live series {live:.1f} MB; peak {peak:.1f} MB")
    print(f"  target < 150 MB: {'PASS' if peak < 150 else 'MISS'}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples per run (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each measurement (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.samples < MESSAGE or args.rounds < 1:
        parser.error(f"--samples must be >= {MESSAGE}, --rounds >= 1")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(f"python {platform.python_version()} ({PY}), {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"grpcio {grpc.__version__}; streamcli client: {' '.join(STREAMCLI)}")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="streamcli-bench-", dir="/tmp") as tmp:
        figures = measure(pathlib.Path(tmp), args.samples, args.rounds)
    report(figures, args.samples)
    print(load_line(load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
