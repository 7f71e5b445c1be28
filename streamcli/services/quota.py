"""``QuotaLedger``: the bytes of the data dir under ``serve --quota``, uploads in flight included.

Comparing what is on disk with one file's size when its upload starts lets
parallel uploads overshoot the quota together: each sees the disk as it was
before any of them wrote. The ledger instead counts, in memory and in O(1) per
operation:

* ``used``: bytes of stored and partial files (initialised from the disk once,
  when the server starts; written bytes move here as they are written);
* ``reserved``: bytes that uploads in flight may still write. An upload of
  declared size reserves what it has left to send when its stream starts; an
  upload of unknown size reserves each chunk before writing it.

A reservation is refused when ``used + reserved + n`` would exceed the quota,
so the sum of what is stored and partial never does. With no quota (0) the
ledger only counts.

The counts live in this process, which is enough for the embedded backend (one
server per data dir). Replicas sharing a directory (``serve --backend redis://``)
keep them in their store instead (``Backend.space``): a reservation is then
taken there, in one step against every replica's, and what uploads write and
give back is passed on behind them (``_Sharing``). Passed on late, a count only
errs on the safe side: written bytes move from reserved to used in one step, and
bytes given back or freed stay counted a moment longer. A replica that dies
loses its reservations when its lease runs out (``redis_space.LEASE_MS``); bytes
it wrote and had not passed on yet are not counted until the count is measured
again (``streamcli:space:used`` deleted: the next reservation measures the
directory).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from streamcli.backends.base import SharedSpace, SpaceUnknownError

log = logging.getLogger(__name__)

#: Seconds between renewals of this replica's lease on its reservations while it holds some.
RENEW_EVERY = 5.0


class QuotaExceeded(Exception):
    """A reservation that does not fit under the quota."""

    def __init__(self, wanted: int, used: int, reserved: int, quota: int) -> None:
        super().__init__(
            f"the server's storage quota would be exceeded: {wanted} more bytes do not fit "
            f"({used} bytes used and {reserved} reserved by uploads in progress, of {quota})"
        )


class QuotaLedger:
    """Bytes used by stored and partial files, and reserved by uploads in flight.

    Usage::

        ledger = QuotaLedger(quota, used=blobs.usage())
        reservation = ledger.reservation()
        await reservation.reserve(declared_size)   # QuotaExceeded when it does not fit
        ...  reservation.wrote(len(chunk)) after each write
        reservation.release()                # when the stream ends, however it ends
        ledger.freed(size)                   # a partial discarded, a file deleted
    """

    def __init__(
        self, quota: int, used: int, shared: SharedSpace | None = None, measure: Callable[[], int] | None = None
    ) -> None:
        self.quota = quota  # bytes; 0 = no limit
        self.used = used  # (shared: what this process saw change, not the total)
        self.reserved = 0  # (shared: this replica's reservations)
        self._sharing = _Sharing(self, shared, measure or (lambda: used)) if shared is not None else None

    def reservation(self) -> Reservation:
        """A new, empty reservation for one upload stream."""
        return Reservation(self)

    def freed(self, size: int) -> None:
        """``size`` bytes of stored or partial files were deleted."""
        self.used = max(0, self.used - size)
        if self._sharing is not None:
            self._sharing.moved(-size, 0)

    async def _take(self, size: int) -> None:
        """Reserve ``size`` bytes, or raise QuotaExceeded."""
        if self._sharing is not None:
            await self._sharing.take(size)
        elif self.quota and self.used + self.reserved + size > self.quota:
            raise QuotaExceeded(size, self.used, self.reserved, self.quota)
        self.reserved += size

    def _moved(self, used: int, reserved: int) -> None:
        """``used`` bytes more are used and ``reserved`` more reserved (negative: fewer)."""
        self.used += used
        self.reserved += reserved
        if self._sharing is not None:
            self._sharing.moved(used, reserved)


class _Sharing:
    """A ledger's counts in the store replicas share: reservations taken there, changes passed on behind.

    Changes made by the synchronous methods wait in ``pending`` for one task that passes them on, in
    order, retrying while the store is away; the same task renews this replica's lease while it holds
    reservations.
    """

    def __init__(self, ledger: QuotaLedger, shared: SharedSpace, measure: Callable[[], int]) -> None:
        self._ledger = ledger
        self._shared = shared
        self._measure = measure  # bytes used in the directory, measured (blocking: run on a thread)
        self._pending = [0, 0]  # used, reserved: not yet passed on
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def take(self, size: int) -> None:
        quota = self._ledger.quota
        try:
            reserved, used, all_reserved = await self._shared.reserve(size, quota, None)
        except SpaceUnknownError:
            measured = await asyncio.to_thread(self._measure)
            reserved, used, all_reserved = await self._shared.reserve(size, quota, measured)
        if not reserved:
            raise QuotaExceeded(size, used, all_reserved, quota)
        self._start()  # (renews the lease from now on)

    def moved(self, used: int, reserved: int) -> None:
        self._pending[0] += used
        self._pending[1] += reserved
        self._wake.set()
        self._start()

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pass_on(), name="quota counts")

    async def _pass_on(self) -> None:
        try:
            while True:
                used, reserved = self._pending
                if not (used or reserved or self._ledger.reserved > 0):
                    return
                if not (used or reserved):  # holding reservations: renew the lease now and then
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), RENEW_EVERY)
                        continue
                    except TimeoutError:
                        pass
                try:
                    await self._shared.adjust(used, reserved)
                except Exception as exc:  # (the store away): the changes wait, and go with the next try
                    log.warning("could not pass on the quota's counts (%s); retrying", exc)
                    await asyncio.sleep(1.0)
                    continue
                self._pending[0] -= used
                self._pending[1] -= reserved
        finally:
            self._task = None


class Reservation:
    """What one upload stream may still write; returned to the ledger by ``release``."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self._ledger = ledger
        self.held = 0  # bytes reserved and not yet written

    async def reserve(self, size: int) -> None:
        """Reserve ``size`` more bytes.

        Raises:
            QuotaExceeded: they do not fit; nothing is reserved.
            StoreUnavailableError: the counts are shared and their store cannot be reached.
        """
        await self._ledger._take(size)
        self.held += size

    def wrote(self, size: int) -> None:
        """``size`` bytes reached the disk: they move from reserved to used."""
        if not size:
            return
        taken = min(size, self.held)  # a write beyond the reservation still counts as used
        self.held -= taken
        self._ledger._moved(size, -taken)

    def release(self) -> None:
        """Give back what was reserved and not written (idempotent)."""
        if self.held:
            self._ledger._moved(0, -self.held)
            self.held = 0
