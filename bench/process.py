"""Live processing (ProcessLiveData) against a raw grpc.aio bidirectional echo of the same messages, same run.

    python bench/process.py [--lines 1000000] [--messages 2000] [--seconds 5] [--rounds 3]

1. Throughput: a grpc.aio client of pre-built messages (100 inputs each, 100 keys) writes them all while it
   reads the results, against ``streamcli serve`` and against a raw server that answers each request with one
   result per input (sequence, key and value: the same messages' cost without the statistics). Target: the
   server's inputs/s at least 0.5 of the echo's.
2. Round trip at 1,000 inputs/s, one input per message, paced: p50 and p99 from write to its result. Target:
   the server's p99 at most 2x the echo's.
3. End to end: ``streamcli process FILE > /dev/null`` of a file of ``--lines`` NDJSON inputs; inputs/s and its
   ratio to the server's figure of step 1.
4. Server RSS after a stream touching 10,000 keys (20 inputs each: every window of 10 full). Target: < 150 MB.

Steps 1 and 2 run ``--rounds`` times, raw and streamcli in turn (the machine is shared: each round's ratio is
printed, and in how many rounds each target was met); step 3's ratio is to the last round's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from _common import MB, PY, STREAMCLI, Served, check, run_client, run_raw_server, serve, verdict

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

SCRIPT = pathlib.Path(__file__).resolve()
SERVICE = "streaming.v1.StreamingService"
METHOD = f"/{SERVICE}/ProcessLiveData"
PER_MESSAGE = 100
KEYS = 100


async def raw_echo() -> None:
    """ProcessLiveData answering each request with one result per input, its sequence, key and value."""

    async def echo(requests: AsyncIterator[pb.ProcessLiveDataRequest], context: Any) -> AsyncIterator[Any]:
        async for request in requests:
            response = pb.ProcessLiveDataResponse()
            for item in request.inputs:
                response.results.add(sequence=item.sequence, key=item.key, value=item.value)
            yield response

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "ProcessLiveData": grpc.stream_stream_rpc_method_handler(
                echo,
                request_deserializer=pb.ProcessLiveDataRequest.FromString,
                response_serializer=pb.ProcessLiveDataResponse.SerializeToString,
            )
        },
    )
    await run_raw_server(handler)


def prebuilt(messages: int, per_message: int, keys: int = KEYS) -> list[bytes]:
    """Serialized requests: ``messages`` of ``per_message`` inputs, over ``keys`` keys, values with outliers."""
    out = []
    sequence = 0
    for _ in range(messages):
        request = pb.ProcessLiveDataRequest()
        for _ in range(per_message):
            sequence += 1
            value = 1000.0 if sequence % 997 == 0 else float(sequence % 13)
            request.inputs.add(sequence=sequence, key=f"k{sequence % keys}", value=value)
        out.append(request.SerializeToString())
    return out


def _call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=pb.ProcessLiveDataResponse.FromString
    )()


async def throughput(address: str, messages: Sequence[bytes], inputs: int) -> float:
    """Inputs/s: every message written while the results are read."""
    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = _call(channel)

        async def write() -> None:
            for message in messages:
                await call.write(message)
            await call.done_writing()

        start = time.perf_counter()
        writer = asyncio.ensure_future(write())
        received = 0
        async for response in call:
            received += len(response.results)
        await writer
        seconds = time.perf_counter() - start
    check(received == inputs, f"{received} results for {inputs} inputs")
    return inputs / seconds


async def round_trips(address: str, rate: float, seconds: float) -> list[float]:
    """Seconds from each write to its result, one input a message, written at ``rate`` a second."""
    count = int(rate * seconds)
    messages = prebuilt(count, 1)
    sent: dict[int, float] = {}
    trips: list[float] = []
    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = _call(channel)

        async def write() -> None:
            start = time.perf_counter()
            for n, message in enumerate(messages, start=1):
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent[n] = time.perf_counter()
                await call.write(message)
            await call.done_writing()

        writer = asyncio.ensure_future(write())
        async for response in call:
            now = time.perf_counter()
            trips.extend(now - sent[r.sequence] for r in response.results)
        await writer
    check(len(trips) == count, f"{len(trips)} results for {count} inputs")
    return trips


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_lines(path: pathlib.Path, lines: int) -> None:
    with open(path, "w") as out:
        for n in range(1, lines + 1):
            value = 1000.0 if n % 997 == 0 else float(n % 13)
            out.write(f'{{"key": "k{n % KEYS}", "value": {value}}}\n')


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["_raw"]:
        asyncio.run(raw_echo())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of steps 1 and 2, raw and streamcli in turn")
    options = parser.parse_args(args)
    messages = prebuilt(options.messages, PER_MESSAGE)
    inputs = options.messages * PER_MESSAGE
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        serving = [PY, "-m", "streamcli", "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp / "data")]
        with (
            serve("raw echo", [PY, str(SCRIPT), "_raw"], tmp / "raw.log") as raw,
            serve("streamcli serve", serving, tmp / "serve.log") as served,
        ):
            for server in (raw, served):  # (a first pass warms both up)
                asyncio.run(throughput(server.address, messages[: len(messages) // 4], inputs // 4))
            ratios: list[float] = []
            p99_ratios: list[float] = []
            rates: dict[str, float] = {}
            print(f"{options.rounds} rounds, raw and streamcli in turn:")
            for round_ in range(1, options.rounds + 1):
                trips: dict[str, list[float]] = {}
                for server in (raw, served):
                    rates[server.label] = asyncio.run(throughput(server.address, messages, inputs))
                    trips[server.label] = asyncio.run(round_trips(server.address, 1000.0, options.seconds))
                ratios.append(rates["streamcli serve"] / rates["raw echo"])
                print(f"round {round_}: throughput, {inputs:,} inputs in messages of {PER_MESSAGE}:")
                for label, rate in rates.items():
                    print(f"  {label:16} {rate:12,.0f} inputs/s")
                print(f"  ratio {ratios[-1]:.2f} (target >= 0.5): {verdict(ratios[-1] >= 0.5)}")
                print(f"round {round_}: round trip at 1,000 inputs/s, one a message, {options.seconds:g} s:")
                for label, values in trips.items():
                    print(f"  {label:16} p50 {1000 * p(values, 0.5):7.2f} ms  p99 {1000 * p(values, 0.99):7.2f} ms")
                p99_ratios.append(p(trips["streamcli serve"], 0.99) / p(trips["raw echo"], 0.99))
                print(f"  p99 ratio {p99_ratios[-1]:.2f} (target <= 2): {verdict(p99_ratios[-1] <= 2)}")
            print(
                f"throughput target met in {sum(r >= 0.5 for r in ratios)} of {len(ratios)} rounds "
                f"({', '.join(f'{r:.2f}' for r in ratios)}); p99 target in {sum(r <= 2 for r in p99_ratios)} "
                f"({', '.join(f'{r:.2f}' for r in p99_ratios)})"
            )

            source = tmp / "inputs.ndjson"
            write_lines(source, options.lines)
            run = run_client(
                [*STREAMCLI, "--address", served.address, "process", str(source)], stdout=pathlib.Path("/dev/null")
            )
            end_to_end = options.lines / run.seconds
            print(f"streamcli process of {options.lines:,} lines to /dev/null:")
            print(
                f"  {run.seconds:.1f} s, {end_to_end:,.0f} inputs/s, client CPU {run.cpu:.1f} s, "
                f"peak RSS {run.peak_rss / MB:.0f} MB; {end_to_end / rates['streamcli serve']:.2f} of the RPC figure"
            )
        _memory(tmp, serving)
    return 0


def _memory(tmp: pathlib.Path, serving: list[str]) -> None:
    """A fresh server's RSS before and after one stream touching 10,000 keys (the stream still open is what
    counts: the keys' state lives as long as the stream; measured right after its last result)."""
    with serve("streamcli serve", serving, tmp / "memory.log") as fresh:
        before = fresh.memory()["VmRSS"]
        asyncio.run(_touch_and_measure(fresh, before))


async def _touch_and_measure(server: Served, before: int) -> None:
    keys, per_key = 10_000, 20
    async with grpc.aio.insecure_channel(server.address, options=transport.client_options()) as channel:
        call = _call(channel)
        for round_ in range(per_key):
            request = pb.ProcessLiveDataRequest(
                inputs=[pb.DataInput(sequence=k, key=f"key-{k:05d}", value=float(round_ + k % 7)) for k in range(keys)]
            )
            await call.write(request.SerializeToString())
            await call.read()
        held = server.memory()["VmRSS"]  # the stream open: its 10,000 windows held
        await call.done_writing()
        await call.wait_for_connection()
        check(await call.code() == grpc.StatusCode.OK, "the stream of 10,000 keys failed")
    print(f"server RSS with 10,000 keys ({per_key} inputs each, windows of 10 full), stream open:")
    print(f"  {before / MB:.0f} MB before, {held / MB:.0f} MB held (target < 150 MB): {verdict(held < 150 * MB)}")


if __name__ == "__main__":
    sys.exit(main())
