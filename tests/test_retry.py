"""The one retry helper (``client.retry.Attempts``): when it retries, what it says, when it gives up.

Its failures are real ``grpc.aio.AioRpcError`` objects as grpc.aio builds them; the loops that use it
(transfers, tails, chat, publish) are tested against real servers in their own files.
"""

from __future__ import annotations

import grpc
import pytest

from streamcli.client.retry import Attempts, RetryPolicy
from streamcli.client.settings import ConnectionSettings
from streamcli.errors import StreamcliError, UnavailableError

FAST = RetryPolicy(retries=2, initial_delay=0.001, max_delay=0.001)


def failure(code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE, details: str = "gone") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


async def test_a_failure_not_worth_retrying_is_raised_at_once() -> None:
    attempts = Attempts(FAST, "upload of a", hint="run it again")
    refused = failure(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempts.failed(refused)
    assert raised.value is refused and attempts.failures == 0


async def test_out_of_retries_the_error_says_how_many_and_how_to_go_on() -> None:
    told: list[str] = []
    policy = RetryPolicy(retries=2, initial_delay=0.001, max_delay=0.001, notice=told.append)
    attempts = Attempts(
        policy, "upload of a", hint="run the same command again", connection=ConnectionSettings(address="127.0.0.1:9")
    )
    await attempts.failed(failure())
    await attempts.failed(failure())
    with pytest.raises(StreamcliError) as raised:
        await attempts.failed(failure())
    assert isinstance(raised.value, UnavailableError)
    assert raised.value.message == (
        "cannot reach the server at 127.0.0.1:9: gone; gave up after 2 retries; run the same command again"
    )
    assert [line.split(" in ")[0] for line in told] == [
        "upload of a: UNAVAILABLE: gone; retry 1 of 2",
        "upload of a: UNAVAILABLE: gone; retry 2 of 2",
    ]


async def test_without_a_hint_the_last_failure_is_raised_as_it_is() -> None:
    attempts = Attempts(RetryPolicy(retries=0), "tail")
    last = failure()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await attempts.failed(last)
    assert raised.value is last


async def test_an_attempt_that_moved_data_starts_the_retries_over() -> None:
    attempts = Attempts(FAST, "download of a", hint="run it again")
    await attempts.failed(failure())
    await attempts.failed(failure())
    await attempts.failed(failure(), progressed=True)  # would have been the third: it moved bytes
    assert attempts.failures == 1


async def test_an_outage_is_announced_once_and_its_end_reported_once() -> None:
    told: list[str] = []
    attempts = Attempts(FAST, "tail", announce=told.append)
    await attempts.failed(failure(details="connection reset"))
    await attempts.failed(failure(details="connection refused"))
    assert told == ["lost the stream (UNAVAILABLE: connection reset); reconnecting, up to 2 tries"]
    assert (attempts.recovered(), attempts.recovered()) == (True, False)
    await attempts.failed(failure(grpc.StatusCode.INTERNAL, "stream reset"))
    assert told[1:] == ["lost the stream (INTERNAL: stream reset); reconnecting, up to 2 tries"]


async def test_codes_of_an_operation_s_own_races_are_retried_for_it_only() -> None:
    busy = failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "read too slowly")
    await Attempts(FAST, "chat", also=frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})).failed(busy)
    with pytest.raises(grpc.aio.AioRpcError):
        await Attempts(FAST, "tail").failed(busy)
