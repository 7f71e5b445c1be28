"""Transfers yield to interactive calls: one server-wide pacer of the bytes file transfers move.

A file transfer is bulk work; a chat message or a tail's record is someone waiting. On a machine with few
cores, transfers at full speed (their clients, the server's transfer threads and grpc's per-message work on
the event loop's thread) keep every core busy, and the loop that serves the interactive streams waits for
one: measured in bench/README.md ("File transfer"), chat p99 went from 14 ms to 142 ms while two uploads and
a download ran. Moving work between threads cannot help there; transfers must take less of the machine
while someone is waiting. So they are a scavenger class, as LEDBAT (RFC 6817), Windows' BITS or
``ionice -c idle`` make bulk traffic:

- Every open call of the service is counted (``server/service.py`` ``counted``): UploadFile and
  DownloadFile are transfers (``FileService.BULK_RPCS``), every other call is interactive.
- While at least one of each is open (and ``PacingSettings.lag_target`` is not 0), the pacer is
  ``engaged``: the upload receive loop and the download send loop await ``admit(nbytes)`` before each chunk,
  a token bucket shared by all transfers; a sampler task measures the event loop's lag (how late a short
  sleep wakes up) and ``RateControl`` sets the bucket's rate by AIMD: lag over the target halves it (never
  below ``floor``, so transfers always progress), lag under half the target adds to it.
- Otherwise transfers are not paced at all: their loops read ``engaged`` (one attribute) per chunk and go on.

The server that stops reading an upload's messages (or sending a download's) stops its client too, through
HTTP/2 flow control: the client processes on the same machine leave the cores to the interactive calls as
well.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

MiB = 1024 * 1024

#: The default ``lag_target``: seconds of event-loop lag above which transfers slow down (``serve
#: --transfer-lag-target``), chosen by measurement (bench/README.md, "File transfer").
DEFAULT_LAG_TARGET = 0.005


@dataclasses.dataclass(frozen=True)
class PacingSettings:
    """How transfers yield to interactive calls (see the module's docstring)."""

    lag_target: float = DEFAULT_LAG_TARGET  # seconds of event-loop lag the pacer keeps under; 0 = no pacing
    floor: float = 4 * MiB  # bytes/s all transfers together keep, however late the loop is
    ceiling: float = 1024 * MiB  # bytes/s at most (unpaced, in effect)
    growth: float = 32 * MiB  # bytes/s the rate gains per second while the loop is early enough
    hold: float = 0.1  # seconds after halving the rate before it may be halved again (the cut takes effect)
    sample_interval: float = 0.005  # seconds the sampler sleeps; the lag is how much later it wakes up
    burst: int = MiB  # bytes the bucket holds when it is full: a chunk at the contract's largest

    def check(self) -> None:
        """Raises ValueError naming what is out of range."""
        if not 0 <= self.lag_target <= 1:
            raise ValueError("the lag target must be between 0 (no pacing) and 1 second")
        if not 0 < self.floor <= self.ceiling or self.growth < 0 or self.hold < 0:
            raise ValueError("pacing needs 0 < floor <= ceiling, growth >= 0 and hold >= 0")
        if self.sample_interval <= 0 or self.burst <= 0:
            raise ValueError("pacing needs a sample interval and a burst of more than 0")


class RateControl:
    """AIMD of the transfers' rate on samples of the event loop's lag (plain logic: no clock, no loop).

    ``observe(lag, now, limited)`` with each sample: a lag over the target halves the rate (at most once per
    ``hold`` seconds: a cut shows in the lag only once the chunks already under way are through), never below
    the floor; a lag under half the target adds ``growth`` per second since the last sample, up to the ceiling,
    but only while the rate ``limited`` the transfers (a rate they do not reach would grow for nothing, and
    take as many halvings to come down again: RFC 7661's rule for TCP's window). In between, it stays.

    It starts at the floor, in slow start (as TCP does): until the first lag over the target, a lag under half
    of it doubles the rate (at most once per ``hold``), so that transfers reach what the loop can afford within
    a second or so, and the first interactive call never meets transfers at full speed (starting at the
    ceiling, the halvings took about 0.8 s, in which a chat's first messages were late: bench/README.md).
    """

    def __init__(self, settings: PacingSettings) -> None:
        self.settings = settings
        self.rate = float(settings.floor)  # bytes/s
        self.slow_start = True  # doubling, until the first lag over the target
        self._cut_at = -math.inf  # when the rate was last halved
        self._doubled_at = -math.inf  # when slow start last doubled it
        self._seen_at: float | None = None  # when the last sample came

    def observe(self, lag: float, now: float, *, limited: bool = True) -> float:
        """Take one sample (``lag``: seconds the loop was late, at ``now``, seconds on any monotonic clock);
        returns the new rate."""
        settings = self.settings
        since = 0.0 if self._seen_at is None else max(0.0, now - self._seen_at)
        self._seen_at = now
        if lag > settings.lag_target:
            self.slow_start = False
            if now - self._cut_at >= settings.hold:
                self.rate = max(settings.floor, self.rate / 2)
                self._cut_at = now
        elif lag < settings.lag_target / 2 and limited:
            if not self.slow_start:
                self.rate = min(settings.ceiling, self.rate + settings.growth * since)
            elif now - self._doubled_at >= settings.hold:
                self.rate = min(settings.ceiling, self.rate * 2)
                self._doubled_at = now
        return self.rate

    def pause(self) -> None:
        """No samples for a while (the pacer disengaged): the next one grows nothing for the time between."""
        self._seen_at = None


class TransferPacer:
    """The server's pacer: counts open calls, and while transfers and interactive calls are both open,
    paces the transfers' chunks (see the module's docstring).

    Usage, in a transfer's chunk loop (the one attribute read when not pacing)::

        if pacer.engaged:
            await pacer.admit(len(chunk))

    and around every call of the service: ``call_opened(bulk)`` ... ``call_closed(bulk)``.
    ``paced_chunks``, ``waiting``, ``transfers`` and ``interactive_calls`` say what it does (tests read them).
    """

    def __init__(self, settings: PacingSettings | None = None) -> None:
        self.settings = settings or PacingSettings()
        self.settings.check()
        # One for the server's life: an engagement starts at the rate where the last one left it.
        self.control = RateControl(self.settings)
        self.engaged = False
        self.transfers = 0  # UploadFile and DownloadFile calls open
        self.interactive_calls = 0  # every other call of the service open
        self.paced_chunks = 0  # chunks admitted while engaged, over the server's life
        self._tokens = 0.0  # bytes the bucket holds (negative: owed by those waiting)
        self._filled_at = 0.0  # the loop's time when ``_tokens`` was right
        self._limited = False  # a chunk had to wait since the last sample
        self._waiters: set[asyncio.Future[None]] = set()
        self._sampler: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Chunks waiting in ``admit`` now."""
        return len(self._waiters)

    def call_opened(self, bulk: bool) -> None:
        """A call of the service started (``bulk``: a transfer)."""
        if bulk:
            self.transfers += 1
        else:
            self.interactive_calls += 1
        self._follow()

    def call_closed(self, bulk: bool) -> None:
        """A call counted by ``call_opened`` ended, however."""
        if bulk:
            self.transfers -= 1
        else:
            self.interactive_calls -= 1
        self._follow()

    def _follow(self) -> None:
        """Engage or disengage as the counts say."""
        engaged = self.settings.lag_target > 0 and self.transfers > 0 and self.interactive_calls > 0
        if engaged == self.engaged:
            return
        self.engaged = engaged
        if not engaged:  # chunks waiting go on at once, unpaced
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.control.pause()
            return
        loop = asyncio.get_running_loop()
        self._tokens, self._filled_at = float(self.settings.burst), loop.time()
        if self._sampler is None or self._sampler.done():  # (one still sleeping goes on sampling)
            self._sampler = loop.create_task(self._sample(), name="streamcli transfer pacing")

    async def admit(self, nbytes: int) -> None:
        """Return once the transfers' shared bucket has room for ``nbytes`` more (at once when not engaged).

        Each chunk takes its bytes from the bucket when it arrives and waits for as long as the bucket's
        rate takes to pay back what it owes, so waiting chunks go in turn, whatever transfer they are of. A
        chunk whose call is cancelled while it waits gives its bytes back. When the pacer disengages, every
        waiting chunk goes on at once.
        """
        if not self.engaged:
            return
        self.paced_chunks += 1
        loop = asyncio.get_running_loop()
        now, rate = loop.time(), self.control.rate
        self._tokens = min(float(self.settings.burst), self._tokens + (now - self._filled_at) * rate) - nbytes
        self._filled_at = now
        if self._tokens >= 0:
            return
        self._limited = True
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(-self._tokens / rate, _wake, waiter)
        self._waiters.add(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            self._tokens += nbytes  # (sent nothing: the next chunk, of any transfer, need not wait for these)
            raise
        finally:
            timer.cancel()
            self._waiters.discard(waiter)

    async def _sample(self) -> None:
        """While engaged: sleep ``sample_interval``, tell ``control`` how late the loop woke up."""
        loop = asyncio.get_running_loop()
        interval = self.settings.sample_interval
        while self.engaged:
            asleep = loop.time()
            await asyncio.sleep(interval)
            now = loop.time()
            if self.engaged:
                # (limited: a chunk waited since the last sample, or waits now: at a few MiB/s a chunk of 1
                # MiB waits across many samples)
                self.control.observe(now - asleep - interval, now, limited=self._limited or bool(self._waiters))
                self._limited = False

    async def close(self) -> None:
        """Stop sampling (the server stops; its calls are over)."""
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
