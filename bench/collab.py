"""Collaborate against a raw grpc.aio relay of the same messages, same run; and joining a long document.

    python bench/collab.py [--editors 10] [--rate 10] [--seconds 10] [--rounds 3] [--revisions 100000]

1. Fan-out: ``--editors`` streams on one document, each making ``--rate`` edits a second (an insertion at
   the start, based on the last revision it saw, so the server transforms most of them), for ``--seconds``.
   For every edit and every other editor: seconds from its write to its arrival there; p50 and p99. The
   same against a raw server that relays each edit to the other streams of the document as a
   CollaborationEvent (no transformation, no log). Target: streamcli's p99 at most 2.5x the relay's. The two
   run in turn, ``--rounds`` times, each round on a new document; every round's ratio is printed (a stall
   of the shared machine in one round shows as one round's outlier, with its max).
2. Join: a document of ``--revisions`` revisions, committed through the server's own path (``Document.commit``
   on the embedded store: snapshots every 1,000 revisions, the last 10,000 edits kept), then a fresh
   ``streamcli serve`` on that data: seconds from the join to the snapshot, for the first join (the document
   is read from its log) and a second. Target: < 0.5 s.
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
from _common import PY, check, run_raw_server, serve, verdict

from streamcli import transport
from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

SCRIPT = pathlib.Path(__file__).resolve()
SERVICE = "streaming.v1.StreamingService"
METHOD = f"/{SERVICE}/Collaborate"


async def raw_relay() -> None:
    """Collaborate as a relay: each edit goes to every other stream as an event; nothing is stored or transformed."""
    streams: set[asyncio.Queue[pb.CollaborateResponse]] = set()
    revision = 0

    async def relay(requests: AsyncIterator[pb.CollaborateRequest], context: Any) -> AsyncIterator[Any]:
        nonlocal revision
        queue: asyncio.Queue[pb.CollaborateResponse] = asyncio.Queue()
        streams.add(queue)
        client_id = ""

        async def receive() -> None:
            nonlocal revision, client_id
            async for request in requests:
                if request.HasField("join"):
                    client_id = request.join.client_id
                    await queue.put(pb.CollaborateResponse(events=[pb.CollaborationEvent(revision=revision)]))
                    continue
                revision += 1
                event = pb.CollaborationEvent(
                    revision=revision, edit=request.edit.edit, client_id=client_id, client_seq=request.edit.client_seq
                )
                for other in streams:
                    other.put_nowait(pb.CollaborateResponse(events=[event]))

        receiver = asyncio.ensure_future(receive())
        try:
            while True:
                yield await queue.get()
        finally:
            receiver.cancel()
            streams.discard(queue)

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Collaborate": grpc.stream_stream_rpc_method_handler(
                relay,
                request_deserializer=pb.CollaborateRequest.FromString,
                response_serializer=pb.CollaborateResponse.SerializeToString,
            )
        },
    )
    await run_raw_server(handler)


def _call(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream(
        METHOD, request_serializer=None, response_deserializer=pb.CollaborateResponse.FromString
    )()


def _join(document: str, client_id: str) -> bytes:
    join = pb.CollaborateJoin(document_id=document, user_id="bench", client_id=client_id)
    return pb.CollaborateRequest(join=join).SerializeToString()


async def fan_out(address: str, document: str, editors: int, rate: float, seconds: float) -> list[float]:
    """Seconds from each edit's write to its arrival at each other editor."""
    sent: dict[tuple[str, int], float] = {}
    delays: list[float] = []
    count = int(rate * seconds)
    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        calls = [_call(channel) for _ in range(editors)]
        revisions = [0] * editors
        for n, call in enumerate(calls):
            await call.write(_join(document, f"e{n}"))
            revisions[n] = (await call.read()).events[0].revision
        expected = count * editors * (editors - 1)

        async def read(n: int) -> None:
            seen = 0
            while seen < count * (editors - 1):
                response = await calls[n].read()
                now = time.perf_counter()
                for event in response.events:
                    revisions[n] = max(revisions[n], event.revision)
                    if event.client_id != f"e{n}" and event.WhichOneof("change") == "edit":
                        delays.append(now - sent[(event.client_id, event.client_seq)])
                        seen += 1

        async def write(n: int) -> None:
            start = time.perf_counter() + n / (rate * editors)  # spread the editors over each period
            for seq in range(1, count + 1):
                delay = start + (seq - 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                edit = pb.CollaborateEdit(
                    base_revision=revisions[n], edit=pb.TextEdit(position=0, insert_text="x"), client_seq=seq
                )
                sent[(f"e{n}", seq)] = time.perf_counter()
                await calls[n].write(pb.CollaborateRequest(edit=edit).SerializeToString())

        await asyncio.wait_for(
            asyncio.gather(*(read(n) for n in range(editors)), *(write(n) for n in range(editors))), seconds + 60
        )
        for call in calls:
            call.cancel()
    check(len(delays) == expected, f"{len(delays)} deliveries for {expected}")
    return delays


async def build(data: pathlib.Path, revisions: int) -> None:
    """A document of ``revisions`` revisions, committed as the server commits them."""
    from streamcli.backends.sqlite import SqliteStore
    from streamcli.ot import Edit
    from streamcli.services.documents import Document, DocumentSettings

    data.mkdir(parents=True)
    store = SqliteStore(data / "streamcli.db")
    try:
        document = Document("long", store, DocumentSettings())
        await document.open()
        for n in range(revisions):
            length = len(document.sequencer.text)
            full = length > 2000  # the text stays about 2,000 code points
            edit = Edit(n % length if full else n % (length + 1), 1 if full else 0, "ab"[n % 2])
            await document.commit("bench", "builder", n + 1, document.revision, [edit])
    finally:
        await store.close()


async def join_time(address: str, document: str) -> float:
    async with grpc.aio.insecure_channel(address, options=transport.client_options()) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        call = _call(channel)
        start = time.perf_counter()
        await call.write(_join(document, "joiner"))
        response = await call.read()
        seconds = time.perf_counter() - start
        check(response.events[0].WhichOneof("change") == "snapshot", "a join answered without a snapshot")
        call.cancel()
    return seconds


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["_raw"]:
        asyncio.run(raw_relay())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", type=int, default=10)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--revisions", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="fan-out rounds, raw and streamcli in turn")
    options = parser.parse_args(args)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        serving = [PY, "-m", "streamcli", "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp / "data")]
        with (
            serve("raw relay", [PY, str(SCRIPT), "_raw"], tmp / "raw.log") as raw,
            serve("streamcli serve", serving, tmp / "serve.log") as served,
        ):
            for n, server in enumerate((raw, served)):  # a short first pass warms both up
                asyncio.run(fan_out(server.address, f"warm{n}", options.editors, options.rate, 1.0))
            ratios: list[float] = []
            print(
                f"fan-out: {options.editors} editors x {options.rate:g} edits/s for {options.seconds:g} s, "
                f"write to each other editor; {options.rounds} rounds, raw and streamcli in turn:"
            )
            for round_ in range(1, options.rounds + 1):
                delays: dict[str, list[float]] = {}
                for server in (raw, served):
                    delays[server.label] = asyncio.run(
                        fan_out(server.address, f"shared{round_}", options.editors, options.rate, options.seconds)
                    )
                for label, values in delays.items():
                    print(
                        f"  round {round_}  {label:16} p50 {1000 * p(values, 0.5):7.2f} ms  "
                        f"p99 {1000 * p(values, 0.99):7.2f} ms  max {1000 * max(values):7.1f} ms"
                    )
                ratios.append(p(delays["streamcli serve"], 0.99) / p(delays["raw relay"], 0.99))
                print(f"  round {round_}  p99 ratio {ratios[-1]:.2f} (target <= 2.5): {verdict(ratios[-1] <= 2.5)}")
        met = sum(r <= 2.5 for r in ratios)
        print(f"  target met in {met} of {len(ratios)} rounds (ratios {', '.join(f'{r:.2f}' for r in ratios)})")

        started = time.perf_counter()
        asyncio.run(build(tmp / "long", options.revisions))
        print(
            f"join of a document of {options.revisions:,} revisions (built in {time.perf_counter() - started:.0f} s):"
        )
        long_serving = [PY, "-m", "streamcli", "serve", "--address", "127.0.0.1:0", "--data-dir", str(tmp / "long")]
        with serve("streamcli serve", long_serving, tmp / "long.log") as served:
            first = asyncio.run(join_time(served.address, "long"))
            second = asyncio.run(join_time(served.address, "long"))
        print(f"  first join {1000 * first:.0f} ms (read from the log), second {1000 * second:.0f} ms")
        print(f"  target < 500 ms: {verdict(first < 0.5)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
