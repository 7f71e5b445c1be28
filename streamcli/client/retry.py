"""Retrying with exponential backoff, for transfers and tails that resume."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

import grpc

from streamcli.client.connection import Connection
from streamcli.client.settings import RECONNECT_RETRIES, ConnectionSettings
from streamcli.errors import error_for_status

log = logging.getLogger("streamcli.client")

#: Failures worth another attempt: the server or the network went away, or it
#: was busy finishing the previous attempt's stream.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,  # e.g. a connection reset mid-stream
        grpc.StatusCode.UNKNOWN,
    }
)

#: Failures that say the server (or the way to it) went away, not that it refused this attempt: a client
#: given several addresses tries the next one (``Connection.fail_over``).
LOST_SERVER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry, and whom to tell."""

    retries: int = RECONNECT_RETRIES  # further attempts after the first
    initial_delay: float = 0.25  # seconds before the first retry
    max_delay: float = 8.0  # cap of the doubling delay, seconds
    # Told a line of text before each retry (the CLI prints it on stderr): a retry is never silent.
    notice: Callable[[str], None] | None = dataclasses.field(default=None, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based), with jitter."""
        base: float = min(self.max_delay, self.initial_delay * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)


class Attempts:
    """The one retry helper: counts the failed attempts of one operation, says so, sleeps between them, gives up.

    Every loop in client/ that reconnects (transfers, tails, chat, publish) has this shape::

        attempts = Attempts(policy, "upload of x", hint="run the same command again to resume", connection=conn)
        while True:
            try:
                ...                        # one attempt
                break
            except grpc.aio.AioRpcError as exc:
                await attempts.failed(exc, progressed=...)  # sleeps, or raises

    and what it says, when it starts over and when it gives up is decided here, and also where the next
    attempt goes: a connection given several addresses moves on to the next after it lost its server.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        what: str,
        *,
        also: frozenset[grpc.StatusCode] = frozenset(),
        hint: str | None = None,
        connection: Connection | ConnectionSettings | None = None,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        """
        Args:
            policy: how many retries, how far apart, and who is told of each.
            what: the operation, as the notices name it ("upload of x.bin").
            also: codes retried for this operation on top of ``RETRYABLE`` (races of its own).
            hint: when the retries run out, the error says this (how to go on) after "gave up after N
                retries"; without one, the last failure is raised as it is.
            connection: the connection the attempts use (or its ``settings``, for one that cannot move):
                the server's address, named by that error, the TLS options a first failure is checked
                against (``handshake.diagnose``), and, given several addresses, the next to try.
            announce: told one line when an outage begins ("lost the stream ...; reconnecting").
        """
        self._policy = policy
        self._what = what
        self._retryable = RETRYABLE | also
        self._hint = hint
        self._connection = connection
        self._channel = connection.channel if isinstance(connection, Connection) else None  # the attempt's
        self._announce = announce
        self.failures = 0  # consecutive failed attempts since the last that worked or moved data

    async def failed(self, exc: grpc.aio.AioRpcError, *, progressed: bool = False) -> None:
        """An attempt failed with ``exc``: sleep before the next, or raise when there is none.

        Args:
            exc: the attempt's failure.
            progressed: the attempt moved data before failing (a flaky network, not a dead server): the
                retries start over.

        Raises:
            grpc.aio.AioRpcError: ``exc``, when it is not worth retrying, or retries ran out without a hint.
            StreamcliError: the retries ran out; the message says how many and the hint.
        """
        if progressed:
            self.failures = 0
        if exc.code() not in self._retryable:
            raise exc
        if not self.failures:
            await self._refuse_mismatch(exc)
        if self.failures >= self._policy.retries:
            if self._hint is None:
                raise exc
            detail = f"{exc.details() or exc.code().name.lower()}; gave up after {self.failures} retries; {self._hint}"
            address = self._settings.address if self._settings is not None else ""
            raise error_for_status(exc.code(), detail, address=address) from exc
        moved_to = self._fail_over(exc)
        if not self.failures and self._announce is not None:
            self._announce(
                f"lost the stream ({exc.code().name}: {exc.details()}); reconnecting, "
                f"up to {self._policy.retries} tries"
            )
        self.failures += 1
        delay = self._policy.delay(self.failures)
        log.info(
            "%s failed (%s: %s); retry %d in %.1fs", self._what, exc.code().name, exc.details(), self.failures, delay
        )
        if self._policy.notice is not None:
            reason = f"{exc.code().name}: {exc.details()}" if exc.details() else exc.code().name
            self._policy.notice(
                f"{self._what}: {reason}; retry {self.failures} of {self._policy.retries} in {delay:.1f} s{moved_to}"
            )
        await asyncio.sleep(delay)
        if isinstance(self._connection, Connection):
            self._channel = self._connection.channel  # the next attempt's

    @property
    def _settings(self) -> ConnectionSettings | None:
        """The settings of the address in use."""
        return self._connection.settings if isinstance(self._connection, Connection) else self._connection

    def _fail_over(self, exc: grpc.aio.AioRpcError) -> str:
        """Move a connection given several addresses on to the next when ``exc`` says its server went away;
        what the retry notice adds (", through ADDRESS"), or "" when it stays."""
        connection = self._connection
        if not isinstance(connection, Connection) or connection.replicas is None or exc.code() not in LOST_SERVER:
            return ""
        assert self._channel is not None
        connection.fail_over(self._channel)
        return f", through {connection.address}"

    async def _refuse_mismatch(self, exc: grpc.aio.AioRpcError) -> None:
        """Raise the configuration error behind ``exc`` if it is a TLS/plaintext mismatch (or a missing client
        certificate): no retry can mend it. Asked at the first failure of an outage only: the check may
        make a probe handshake of its own (``handshake.diagnose``)."""
        if self._settings is None or exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN):
            return
        from streamcli.client.handshake import diagnose

        settings = self._settings
        mismatch = await asyncio.to_thread(diagnose, settings, settings.address, exc.details() or "")
        if mismatch is not None:
            raise mismatch from exc

    def recovered(self) -> bool:
        """An attempt worked: the retries start over. True when it ended an outage (time to say so)."""
        ended_outage = self.failures > 0
        self.failures = 0
        return ended_outage


#: The policy used unless a command says otherwise.
DEFAULT_RETRY = RetryPolicy()
