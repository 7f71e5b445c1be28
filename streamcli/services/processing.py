"""Live processing: ProcessLiveData (bidirectional), windowed statistics per key as the inputs flow.

Each key has a window (the last N inputs, or those within a duration of its
latest input's time) kept with O(1) work per input: a running mean and sum of
squared deviations (Welford's update, with its inverse for the input leaving),
and monotonic queues for the minimum and maximum (a window of at most
``SMALL_WINDOW`` samples keeps them as values). An input is scored against
the window *before* it (z-score, anomaly): scored against a window that holds
it, an outlier of a 10-sample window could never be more than 3 standard
deviations out (Samuelson's inequality).

What a stream holds is bounded: at most ``max_keys`` keys (the least recently
used is evicted), each window at most ``MAX_WINDOW`` samples. The handler
reads a request only once the previous one's response is written, so a client
that stops reading stops the server reading its inputs (HTTP/2 flow control)
and nothing queues up in between. An input that cannot be processed is
answered with an error in its result; only a malformed request or options out
of range end the stream. Inputs arrive sliced from the wire bytes, and each
result is written after its input's bytes (``services/live_inputs.py``).
"""

from __future__ import annotations

import collections
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, ClassVar

import grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
from streamcli.services.checks import MalformedRequest
from streamcli.services.live_inputs import Input, decode_live_request, head_refusal, message_inputs
from streamcli.services.rpc import Context, abort
from streamcli.services.wire import repeated_messages, varint, varint_field

DEFAULT_WINDOW, MAX_WINDOW = 10, 10_000
DEFAULT_Z = 3.0
DEFAULT_KEYS = MAX_KEYS = 10_000
MAX_INPUTS_PER_REQUEST = 10_000
MAX_DURATION_SECONDS = 366 * 86_400
_NANOS = 1_000_000_000
#: Windows of at most this many samples take min and max over their samples (see ``Window``).
SMALL_WINDOW = 64


class Window:
    """One key's window: its samples (and their times, for a time window), running mean, spread, min and max.

    A small window (``SMALL_WINDOW`` samples at most) keeps its min and max as values, taken again with
    ``min()``/``max()`` over the samples when the sample leaving was one of them: measured cheaper there than
    the monotonic queues larger ones keep, and than ``min()``/``max()`` for every input.
    """

    __slots__ = (
        "count", "high", "latest", "low", "maxima", "mean", "minima", "pushed", "spread", "times", "values",
    )  # fmt: skip

    def __init__(self, timed: bool, small: bool) -> None:
        self.values: collections.deque[float] = collections.deque()
        self.times: collections.deque[int] | None = collections.deque() if timed else None
        self.mean = 0.0
        self.spread = 0.0  # sum of squared deviations from the mean (Welford's M2)
        # (index, value) pairs, values increasing (minima) or decreasing (maxima): the front is the window's.
        self.minima: collections.deque[tuple[int, float]] | None = None if small else collections.deque()
        self.maxima: collections.deque[tuple[int, float]] | None = None if small else collections.deque()
        self.pushed = 0  # samples ever added: the index of the next one (a large window's queues use it)
        self.count = 0  # inputs taken, late ones included
        self.latest: int | None = None  # the latest input time, in nanoseconds since the epoch
        # A small window's min and max (kept by ``LiveStream.process``; 0 while it is empty).
        self.low = self.high = 0.0

    def extremes(self) -> tuple[float, float]:
        """A large window's (min, max), the fronts of its monotonic queues; (0, 0) when it is empty. (A small
        window's are ``low`` and ``high``.)"""
        if not self.minima or not self.maxima:
            return 0.0, 0.0
        return self.minima[0][1], self.maxima[0][1]

    def add(self, value: float, at: int, limit: int) -> None:
        """Add a sample (at ``at`` ns, kept for a time window), dropping the oldest if the window holds ``limit``.
        (A full small count window's one-for-one replacement is written out in ``LiveStream.process``.)"""
        values = self.values
        while len(values) >= limit:
            self.drop_oldest()
        index = self.pushed
        self.pushed += 1
        values.append(value)
        if self.times is not None:
            self.times.append(at)
        delta = value - self.mean
        self.mean += delta / len(values)
        self.spread += delta * (value - self.mean)
        minima, maxima = self.minima, self.maxima
        if minima is not None and maxima is not None:
            while minima and minima[-1][1] >= value:
                minima.pop()
            minima.append((index, value))
            while maxima and maxima[-1][1] <= value:
                maxima.pop()
            maxima.append((index, value))

    def drop_oldest(self) -> None:
        value = self.values.popleft()
        if self.times is not None:
            self.times.popleft()
        index = self.pushed - len(self.values) - 1
        n = len(self.values)
        if n == 0:
            self.mean = self.spread = 0.0
        else:
            delta = value - self.mean
            self.mean -= delta / n
            self.spread = max(0.0, self.spread - delta * (value - self.mean))
        if self.minima and self.minima[0][0] == index:
            self.minima.popleft()
        if self.maxima and self.maxima[0][0] == index:
            self.maxima.popleft()


class Options:
    """A stream's options, from its first request."""

    __slots__ = ("duration", "max_keys", "window", "z")

    def __init__(self, window: int, duration: int, z: float, max_keys: int) -> None:
        self.window = window  # samples (a count window), or MAX_WINDOW with a time window
        self.duration = duration  # nanoseconds; 0 for a count window
        self.z = z
        self.max_keys = max_keys


def options_of(request: pb.ProcessLiveDataRequest) -> Options | str:
    """The stream's options from its first request, or why they are refused."""
    if request.window > MAX_WINDOW:
        return f"window is {request.window} samples; at most {MAX_WINDOW}"
    z = request.z
    if not math.isfinite(z) or z < 0:
        return f"z is {z}; it must be a finite number, not negative (0 means {DEFAULT_Z:g})"
    if request.max_keys > MAX_KEYS:
        return f"max_keys is {request.max_keys}; at most {MAX_KEYS}"
    duration = 0
    if request.HasField("window_duration"):
        given = request.window_duration
        duration = given.seconds * _NANOS + given.nanos
        if given.seconds * given.nanos < 0 or abs(given.nanos) >= _NANOS:
            return "window_duration is not a valid Duration (seconds and nanos disagree)"
        if duration <= 0 or duration > MAX_DURATION_SECONDS * _NANOS:
            return f"window_duration must be positive and at most {MAX_DURATION_SECONDS} s"
        if request.window:
            return "window and window_duration are exclusive: give one"
    window = MAX_WINDOW if duration else request.window or DEFAULT_WINDOW
    return Options(window, duration, z or DEFAULT_Z, request.max_keys or DEFAULT_KEYS)


#: A stream's options when its first request gives none.
_DEFAULT_OPTIONS = Options(DEFAULT_WINDOW, 0, DEFAULT_Z, DEFAULT_KEYS)
#: What a stream's messages are, as ProcessLiveData's request deserializer makes them: the inputs of a message
#: of inputs alone, sliced from its bytes, or any other message parsed.
LiveRequest = pb.ProcessLiveDataRequest | list[Input]


class LiveStream:
    """The state of one ProcessLiveData stream: its options, and each key's window, least recently used first."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.windows: collections.OrderedDict[bytes, Window] = collections.OrderedDict()  # by the key's UTF-8
        self.evicted = 0

    def process(self, inputs: Iterable[Input]) -> bytes:
        """The serialized ProcessLiveDataResponse of ``inputs``' results, in order (``services/wire.py``: built
        with ``struct`` after each input's head, several times cheaper than setting 14 fields of a message per
        input; ``services/live_inputs.py`` makes the inputs).

        The statistics of ``Window`` are written out in the loop for a full small count window, the common
        case (one sample replaces another): a method call per input was a measurable part of the cost."""
        options = self.options
        windows = self.windows
        timed = options.duration > 0
        limit = options.window
        small = not timed and limit <= SMALL_WINDOW
        threshold = options.z
        now = time.time_ns() if timed else 0
        payloads: list[bytes] = []
        append = payloads.append
        isfinite, sqrt = math.isfinite, math.sqrt
        pack, join, counts, helds = _STATISTICS.pack, b"".join, _COUNTS, _HELDS
        for head, key, value, at in inputs:
            if not key:  # (refused when it was made: the head is its result)
                append(head)
                continue
            if not isfinite(value):
                append(head_refusal(head))
                continue
            window = windows.get(key)
            if window is None:
                if len(windows) >= options.max_keys:
                    windows.popitem(last=False)
                    self.evicted += 1
                window = windows[key] = Window(timed, small)
            else:
                windows.move_to_end(key)
            if at is None and timed:
                at = now
            late = at is not None and window.latest is not None and at < window.latest
            values = window.values
            held = len(values)
            spread = window.spread
            # The z-score against the window before the input (0 with fewer than 2 samples or no spread; also
            # when the spread is so small that its square root per sample is 0, as of denormal values).
            deviation = sqrt(spread / held) if held >= 2 and spread > 0.0 else 0.0
            z = (value - window.mean) / deviation if deviation else 0.0
            window.count += 1
            if not late:
                if at is not None:
                    window.latest = at
                if small and held >= limit:
                    # A full small count window: one sample replaces another (Welford's update for both; the
                    # extremes taken again over the samples only when the sample leaving was one).
                    old = values.popleft()
                    values.append(value)
                    mean = window.mean
                    window.mean = new_mean = mean + (value - old) / held
                    spread += (value - old) * (value - new_mean + old - mean)
                    window.spread = spread = spread if spread > 0.0 else 0.0
                    low, high = window.low, window.high
                    if old == low:
                        window.low = min(values)
                    elif value < low:
                        window.low = value
                    if old == high:
                        window.high = max(values)
                    elif value > high:
                        window.high = value
                else:
                    if timed:
                        assert window.times is not None and at is not None
                        times, start = window.times, at - options.duration
                        while times and times[0] <= start:
                            window.drop_oldest()
                    window.add(value, at or 0, limit)
                    spread = window.spread
                    held = len(values)
                    if small:
                        window.low, window.high = min(values), max(values)
            if small:
                low, high = window.low, window.high
            else:
                low, high = window.extremes()
            count, evicted = window.count, self.evicted
            # (Values near the largest double overflow the mean and spread: the statistics then say inf or nan,
            # and a spread of -inf a standard deviation of 0; none of it ends the stream.)
            append(
                join(
                    (
                        head,
                        pack(
                            0x21,
                            window.mean,
                            0x39,
                            low,
                            0x41,
                            high,
                            0x49,
                            sqrt(spread / held) if held and not spread < 0.0 else 0.0,
                            0x51,
                            z,
                        ),
                        counts[count] if count < 16384 else b"\x28" + varint(count),
                        _TRUE_6 if abs(z) > threshold else b"",
                        helds[held],
                        _TRUE_12 if late else b"",
                        b"\x70" + varint(evicted) if evicted else b"",
                    )
                )
            )
        return repeated_messages(1, payloads)


#: ProcessingResult's double fields moving_average, min, max, stddev and z_score (4, 7, 8, 9, 10), each after
#: its tag (field number << 3 | 1: 64-bit), written after the head (fields 1-3). Zeros are written too: a
#: parser reads them as unset.
_STATISTICS = struct.Struct("<BdBdBdBdBd")
_TRUE_6, _TRUE_12 = varint_field(6, 1), varint_field(12, 1)
#: Fields 5 (count) and 11 (window_count) of 0 to 16383, tag and varint: most counts, every window's.
_COUNTS = [b"\x28" + varint(n) for n in range(1 << 14)]
_HELDS = [b"\x58" + varint(n) for n in range(1 << 14)]


class ProcessingService:
    """ProcessLiveData of ``StreamingService``; see the module's docstring. It stores nothing: any caller may
    use it, and a stream's state is its own."""

    #: The RPCs of the contract this class implements (server/service.py binds them).
    RPCS: ClassVar[tuple[str, ...]] = ("ProcessLiveData",)
    #: Inputs are sliced out of the wire bytes (``services/live_inputs.py``).
    REQUEST_DESERIALIZERS: ClassVar[dict[str, Callable[[bytes], Any]]] = {"ProcessLiveData": decode_live_request}

    async def ProcessLiveData(
        self, request_iterator: AsyncIterator[LiveRequest], context: Context
    ) -> AsyncIterator[bytes]:
        stream: LiveStream | None = None
        number = 0
        try:
            async for request in request_iterator:
                if stream is None:
                    options = _DEFAULT_OPTIONS if isinstance(request, list) else options_of(request)
                    if isinstance(options, str):
                        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, options)
                    stream = LiveStream(options)
                # (A list: the inputs of a message of inputs alone, sliced by decode_live_request.)
                count = len(request) if isinstance(request, list) else len(request.inputs)
                if count > MAX_INPUTS_PER_REQUEST:
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"message {number} carries {count} inputs; at most {MAX_INPUTS_PER_REQUEST}",
                    )
                number += 1
                if not count:
                    continue
                # The next request is read once this is written: the client's reading paces the server's.
                yield stream.process(request if isinstance(request, list) else message_inputs(request.inputs))
        except MalformedRequest as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.detail)
