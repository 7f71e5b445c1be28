"""What handing received events up as typed records costs the client, per event (no server, no network).

100,000 events like ``bench/tail.py``'s (a small JSON object as a Struct in the Any), in StreamUserEvents
responses of 500 parsed from their wire bytes, as a tail receives them; each variant timed over all of them
with ``timeit`` in CPU time (``time.process_time``: on a machine shared with other work, the wall time
says more about them), the best of --repeat rounds that run the variants in turn:

- iterating the messages (the floor every variant pays);
- wrapping each in ``streamcli.client.events.Event`` (what ``tail_events``'s ``EventBatch`` does as it is read);
- copying every field into a frozen, slotted dataclass (the alternative to the wrapper);
- the ``--json`` line: from the message (before typed records), through the wrapper, and from the
  dataclass's fields.

Run it with the interpreter streamcli is installed in::

    python bench/records.py [--events 100000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from tail import make_event  # bench/tail.py: the events its replay stores

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.events import EVENT_TYPES, Event, EventBatch, data_json
from streamcli.client.jsontext import struct_json
from streamcli.times import Instant, rfc3339

_quote = json.encoder.encode_basestring
STRUCT_URL = "type.googleapis.com/google.protobuf.Struct"


@dataclasses.dataclass(frozen=True, slots=True)
class EagerEvent:
    """Every field read out of the message at once: the dataclass ``Event`` could have been."""

    id: int
    user_id: str
    type: str
    timestamp: Instant
    data_type_url: str
    data_value: bytes


def eager(message: pb.UserEvent) -> EagerEvent:
    stamp, data = message.timestamp, message.data
    return EagerEvent(
        message.id, message.user_id, EVENT_TYPES.name(message.type), Instant(stamp.seconds, stamp.nanos),
        data.type_url, data.value,
    )  # fmt: skip


def eager_line(event: EagerEvent) -> str:
    data = struct_json(event.data_value) if event.data_type_url == STRUCT_URL else "null"
    return (
        f'{{"id":{event.id},"user_id":{_quote(event.user_id)},"type":"{event.type}",'
        f'"timestamp":"{rfc3339(event.timestamp)}","data":{data}}}'
    )


def message_line(message: pb.UserEvent) -> str:
    """The ``--json`` line straight from the message, as the CLI built it before typed records."""
    return (
        f'{{"id":{message.id},"user_id":{_quote(message.user_id)},"type":"{EVENT_TYPES.name(message.type)}",'
        f'"timestamp":"{rfc3339(message.timestamp)}","data":{data_json(message.data)}}}'
    )


def received(total: int) -> list[Sequence[pb.UserEvent]]:
    response = pb.StreamUserEventsResponse()
    for i in range(500):
        event = make_event(i)
        event.id = i + 1
        event.timestamp.FromNanoseconds(1_764_000_000_000_000_000 + i * 1_000_123)
        response.events.append(event)
    wire = response.SerializeToString()
    return [pb.StreamUserEventsResponse.FromString(wire).events for _ in range(total // 500)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100_000, help="events converted (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    batches = received(args.events)
    total = sum(len(batch) for batch in batches)
    # The variants agree on what they print before anything is timed.
    for message in batches[0][:50]:
        line = message_line(message)
        assert Event(message).json_line() == line == eager_line(eager(message))
        assert json.loads(line) == Event(message).to_json()  # (the Struct's keys may come in another order)

    variants: list[tuple[str, Callable[[], Any]]] = [
        ("iterate the messages (floor)", lambda: [m for b in batches for m in b]),
        ("wrap: Event(message)", lambda: [Event(m) for b in batches for m in b]),
        ("copy: frozen slotted dataclass", lambda: [eager(m) for b in batches for m in b]),
        ("--json line from the message (before)", lambda: [message_line(m) for b in batches for m in b]),
        (
            "--json line: through EventBatch (tail_events)",
            lambda: [e.json_line() for b in batches for e in EventBatch(b)],
        ),
        ("--json line: dataclass copy, then its line", lambda: [eager_line(eager(m)) for b in batches for m in b]),
    ]
    print(f"{total:,} events, best of {args.repeat} rounds (the variants round-robin), CPU time")
    print(f"{'variant':<46} {'ms':>8} {'us/event':>9} {'- floor':>9}")
    best = [float("inf")] * len(variants)
    for _ in range(args.repeat):  # round-robin: a busy spell of the machine falls on all variants alike
        for index, (_, run) in enumerate(variants):
            best[index] = min(best[index], timeit.timeit(run, timer=time.process_time, number=1))
    floor = best[0] / total * 1e6
    for (label, _), seconds in zip(variants, best, strict=True):
        per_event = seconds / total * 1e6
        print(f"{label:<46} {seconds * 1e3:8.1f} {per_event:9.2f} {per_event - floor:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
