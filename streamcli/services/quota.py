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
server per data dir). Replicas sharing a directory would need the counts in
the shared store instead.
"""

from __future__ import annotations


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
        reservation.reserve(declared_size)   # QuotaExceeded when it does not fit
        ...  reservation.wrote(len(chunk)) after each write
        reservation.release()                # when the stream ends, however it ends
        ledger.freed(size)                   # a partial discarded, a file deleted
    """

    def __init__(self, quota: int, used: int) -> None:
        self.quota = quota  # bytes; 0 = no limit
        self.used = used
        self.reserved = 0

    def reservation(self) -> Reservation:
        """A new, empty reservation for one upload stream."""
        return Reservation(self)

    def freed(self, size: int) -> None:
        """``size`` bytes of stored or partial files were deleted."""
        self.used = max(0, self.used - size)


class Reservation:
    """What one upload stream may still write; returned to the ledger by ``release``."""

    def __init__(self, ledger: QuotaLedger) -> None:
        self._ledger = ledger
        self.held = 0  # bytes reserved and not yet written

    def reserve(self, size: int) -> None:
        """Reserve ``size`` more bytes.

        Raises:
            QuotaExceeded: they do not fit; nothing is reserved.
        """
        ledger = self._ledger
        if ledger.quota and ledger.used + ledger.reserved + size > ledger.quota:
            raise QuotaExceeded(size, ledger.used, ledger.reserved, ledger.quota)
        ledger.reserved += size
        self.held += size

    def wrote(self, size: int) -> None:
        """``size`` bytes reached the disk: they move from reserved to used."""
        taken = min(size, self.held)  # a write beyond the reservation still counts as used
        self.held -= taken
        self._ledger.reserved -= taken
        self._ledger.used += size

    def release(self) -> None:
        """Give back what was reserved and not written (idempotent)."""
        self._ledger.reserved -= self.held
        self.held = 0
