"""Retrying with exponential backoff, for transfers and tails that resume."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Callable

import grpc

from streamcli.client.settings import RECONNECT_RETRIES

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
    """Counts attempts of one operation and sleeps between them.

    Usage::

        attempts = Attempts(policy)
        while True:
            try:
                ...
                break
            except grpc.aio.AioRpcError as exc:
                await attempts.backoff(exc)   # re-raises when not retryable or out of retries
    """

    def __init__(self, policy: RetryPolicy, what: str) -> None:
        self._policy = policy
        self._what = what
        self.failures = 0

    def will_retry(self, exc: grpc.aio.AioRpcError, *, also: frozenset[grpc.StatusCode] = frozenset()) -> bool:
        """Whether ``backoff`` would retry after ``exc`` (rather than re-raise it)."""
        return exc.code() in RETRYABLE | also and self.failures < self._policy.retries

    def exhausted(self, exc: grpc.aio.AioRpcError, *, also: frozenset[grpc.StatusCode] = frozenset()) -> bool:
        """Whether ``exc`` is worth retrying but the retries are used up (time to say how to resume)."""
        return exc.code() in RETRYABLE | also and not self.will_retry(exc, also=also)

    async def backoff(self, exc: grpc.aio.AioRpcError, *, also: frozenset[grpc.StatusCode] = frozenset()) -> None:
        """Sleep before the next attempt, or re-raise ``exc`` if there is none."""
        if not self.will_retry(exc, also=also):
            raise exc
        self.failures += 1
        delay = self._policy.delay(self.failures)
        log.info(
            "%s failed (%s: %s); retry %d in %.1fs", self._what, exc.code().name, exc.details(), self.failures, delay
        )
        if self._policy.notice is not None:
            reason = f"{exc.code().name}: {exc.details()}" if exc.details() else exc.code().name
            self._policy.notice(
                f"{self._what}: {reason}; retry {self.failures} of {self._policy.retries} in {delay:.1f} s"
            )
        await asyncio.sleep(delay)


#: The policy used unless a command says otherwise.
DEFAULT_RETRY = RetryPolicy()
