"""Live processing over ProcessLiveData: inputs read by line as they come, results as they come back.

Inputs are NDJSON objects (``{"key", "value", "timestamp"?}``) or plain
numbers (key ``default``), one a line; an input's sequence number is its line
number, so every result (and every refusal) names its line. The descriptor is
read on a thread (``client/ndjson.read_chunks``): what a read brings goes out
at once, in messages of at most ``MESSAGE_INPUTS``, and no more than
``in_flight`` inputs are ever sent and not yet answered. A line that is not an
input is refused here; an input the server cannot process comes back with its
error. A live stream's windows live on the server for the stream only, so a
lost stream is not resumed: the command ends and says how far it got.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import IO, Any

import grpc
import msgspec

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.client.connection import Connection, FirstStatus
from streamcli.client.events import parse_time
from streamcli.client.ndjson import read_chunks
from streamcli.client.records import CACHED, CACHED_CHARS
from streamcli.client.streams import bytes_bidi_stream
from streamcli.errors import UsageError
from streamcli.protowire import SMALL, pack_double, string_field, timestamp_parts, varint

#: Inputs per ProcessLiveDataRequest at most (the server takes 10,000).
MESSAGE_INPUTS = 1000
DEFAULT_IN_FLIGHT = 10_000
DEFAULT_KEY = "default"
_ZERO = bytes(8)
_DECODE = msgspec.json.Decoder().decode


@dataclasses.dataclass(slots=True)
class LiveResult:
    """The server's result for one input (``line``: its line, the sequence number it was sent with).

    (Not frozen: a frozen dataclass's 14 fields, each set through ``object.__setattr__``, cost several times
    the rest of taking a result.)"""

    line: int
    key: str
    value: float
    mean: float
    min: float
    max: float
    stddev: float
    z: float
    count: int
    window_count: int
    anomaly: bool
    late: bool
    error: str
    evicted_keys: int

    @classmethod
    def of(cls, r: pb.ProcessingResult) -> LiveResult:
        return cls(
            r.sequence,
            r.key,
            r.value,
            r.moving_average,
            r.min,
            r.max,
            r.stddev,
            r.z_score,
            r.count,
            r.window_count,
            r.anomaly,
            r.late,
            r.error,
            r.evicted_keys,
        )

    def to_json(self) -> dict[str, Any]:
        if self.error:
            return {"line": self.line, "key": self.key, "value": _number(self.value), "error": self.error}
        record: dict[str, Any] = {
            "line": self.line,
            "key": self.key,
            "value": self.value,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "stddev": self.stddev,
            "z": self.z,
            "count": self.count,
            "window_count": self.window_count,
            "anomaly": self.anomaly,
            "late": self.late,
            "evicted_keys": self.evicted_keys,
        }
        if not math.isfinite(self.value + self.mean + self.min + self.max + self.stddev + self.z):
            for name in _STATISTICS:  # (a window whose values overflowed its statistics: inf, nan)
                record[name] = _number(record[name])
        return record


_STATISTICS = ("value", "mean", "min", "max", "stddev", "z")


def _number(value: float) -> float | str:
    """A value JSON can carry: NaN and the infinities as protobuf's JSON mapping writes them."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


@dataclasses.dataclass(frozen=True)
class LiveOptions:
    """The stream's options: a count window or a time window (seconds), the threshold, the bound in flight."""

    window: int = 0  # samples; 0: the server's default (10)
    window_seconds: float = 0.0  # a time window instead, when positive
    z: float = 0.0  # 0: the server's default (3)
    in_flight: int = DEFAULT_IN_FLIGHT


@dataclasses.dataclass
class LiveSummary:
    """What a run did so far: inputs sent, results, anomalies, late inputs, refusals (here and by the server)."""

    source: str
    sent: int = 0
    results: int = 0
    anomalies: int = 0
    late: int = 0
    errors: int = 0  # inputs the server answered with an error
    refused_lines: int = 0  # lines that were not inputs
    evicted_keys: int = 0

    @property
    def refused(self) -> int:
        return self.errors + self.refused_lines

    def text(self) -> str:
        return (
            f"{self.source}: {self.sent} input(s) sent, {self.results} result(s), {self.anomalies} anomal"
            f"{'y' if self.anomalies == 1 else 'ies'}, {self.late} late, {self.refused} refused, "
            f"{self.evicted_keys} key(s) evicted"
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_input(line: bytes, number: int) -> bytes | str:
    """The input of one line (a JSON object or a plain number), as it goes in a request (``encode_input``), or
    why it is none."""
    try:
        fields = _DECODE(line)
    except msgspec.DecodeError as exc:
        if line.lstrip().startswith(b"{"):
            return f"not JSON: {exc}"
        try:
            return encode_input(number, DEFAULT_KEY, float(line))  # also nan, inf
        except ValueError:
            return "not a number or a JSON object"
    if isinstance(fields, (int, float)) and not isinstance(fields, bool):
        return encode_input(number, DEFAULT_KEY, float(fields))
    if not isinstance(fields, dict):
        return "not a number or a JSON object"
    key, value, stamp = fields.get("key"), fields.get("value"), fields.get("timestamp")
    if not isinstance(key, str):
        return "no 'key' string"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "no 'value' number"
    value = float(value) if abs(value) < 2**1024 else math.inf
    if stamp is None:
        return encode_input(number, key, value)
    if not isinstance(stamp, str):
        return "'timestamp' is not an RFC 3339 string"
    try:
        return encode_input(number, key, value, parse_time(stamp))
    except UsageError as exc:
        return f"'timestamp': {exc.message}"


def encode_input(sequence: int, key: str, value: float, time: tuple[int, int] | None = None) -> bytes:
    """A DataInput as field 1 of a ProcessLiveDataRequest, in the library's bytes (``protowire``): a request is
    such fields joined. Building the message costs several times this; the server slices inputs written so
    out of the request without a parse (``services/live_inputs.py``)."""
    parts = [b"\x08", varint(sequence), _key_field(key) if len(key) <= CACHED_CHARS else string_field(2, key)]
    number = pack_double(value)
    if number != _ZERO:
        parts += (b"\x19", number)
    if time is not None:
        parts += timestamp_parts(b"\x22", *time)
    body = b"".join(parts)
    size = len(body)
    return b"".join((b"\x0a", SMALL[size] if size < 128 else varint(size), body))


@functools.lru_cache(maxsize=CACHED)
def _key_field(key: str) -> bytes:
    return string_field(2, key)


async def input_lines(stream: IO[Any]) -> AsyncIterator[list[bytes]]:
    """The complete lines of ``stream``, in lists, each as soon as a read brings it (a live pipe's line by line);
    a last line without a newline too."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO)
        yield [line.encode() if isinstance(line, str) else line for line in stream.read().splitlines()]
        return
    pending = b""
    async for chunk in read_chunks(fd):
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        pending = data[cut:]
        if cut:
            yield data[: cut - 1].split(b"\n")
    if pending:
        yield [pending]


class _Budget:
    """Inputs that may still be sent before the server answers some (``--in-flight``)."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._changed = asyncio.Event()

    async def take(self, count: int) -> None:
        while self.free < count:
            self._changed.clear()
            await self._changed.wait()
        self.free -= count

    def give(self, count: int) -> None:
        self.free += count
        self._changed.set()


class LiveProcess:
    """One ProcessLiveData stream of ``lines``; ``summary`` says how far it got, also when it failed."""

    def __init__(
        self,
        conn: Connection,
        source: str,
        lines: AsyncIterator[Iterable[bytes]],
        options: LiveOptions,
        on_results: Callable[[list[LiveResult]], None],
        on_refusal: Callable[[int, str], None],
    ) -> None:
        self._conn = conn
        self._lines = lines
        self._options = options
        self._on_results = on_results
        self._on_refusal = on_refusal
        self.summary = LiveSummary(source)

    def _first_request(self) -> pb.ProcessLiveDataRequest:
        options = self._options
        request = pb.ProcessLiveDataRequest(window=options.window, z=options.z)
        if options.window_seconds > 0:
            whole = int(options.window_seconds)
            request.window_duration.seconds = whole
            request.window_duration.nanos = round((options.window_seconds - whole) * 1e9)
        return request

    async def run(self) -> LiveSummary:
        """Send every input and hand over every result; returns the summary.

        Raises:
            grpc.aio.AioRpcError: the stream failed (translated by the connection).
        """
        call = bytes_bidi_stream(self._conn, "ProcessLiveData", pb.ProcessLiveDataResponse)(
            metadata=self._conn.metadata
        )
        first_status = FirstStatus(call)
        budget = _Budget(self._options.in_flight)
        writer = asyncio.ensure_future(self._write(call, budget))
        summary = self.summary
        try:
            async for response in call:
                results = [LiveResult.of(r) for r in response.results]
                budget.give(len(results))
                summary.results += len(results)
                for result in results:
                    if result.error:
                        summary.errors += 1
                        self._on_refusal(result.line, result.error)
                    else:
                        summary.anomalies += result.anomaly
                        summary.late += result.late
                        summary.evicted_keys = result.evicted_keys
                self._on_results(results)
            await writer  # (a failure to read the input surfaces here)
        except grpc.aio.AioRpcError as exc:
            raise first_status.unmask(exc) from exc
        except asyncio.CancelledError:
            failure = writer.exception() if writer.done() and not writer.cancelled() else None
            if failure is not None:  # the input could not be read: the writer ended the call
                raise failure from None
            raise
        finally:
            if not writer.done():
                writer.cancel()
                call.cancel()
        return summary

    async def _write(self, call: Any, budget: _Budget) -> None:
        options = self._first_request().SerializeToString()  # (before the first inputs: fields in any order)
        step = max(1, min(MESSAGE_INPUTS, self._options.in_flight))
        try:
            number = 0
            async for lines in self._lines:
                inputs = []
                for line in lines:
                    number += 1
                    if not line.strip():
                        continue
                    parsed = parse_input(line, number)
                    if isinstance(parsed, str):
                        self.summary.refused_lines += 1
                        self._on_refusal(number, parsed)
                    else:
                        inputs.append(parsed)
                for start in range(0, len(inputs), step):
                    part = inputs[start : start + step]
                    await budget.take(len(part))
                    await call.write(options + b"".join(part))
                    options = b""
                    self.summary.sent += len(part)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended: reading its responses says how
        except BaseException:
            call.cancel()  # (the reader of the responses then learns why from this task)
            raise
