"""What every RPC handler uses of grpc.aio: its context, and ending a call with a status.

``abort`` is ``context.abort`` typed as what it is, a call that never returns
(grpc ships no types), so that the code after a refusal needs no
``assert x is not None`` to tell the type checker what the refusal ruled out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn, TypeAlias

import grpc

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


async def abort(
    context: Context, code: grpc.StatusCode, detail: str, trailer: Sequence[tuple[str, str]] = ()
) -> NoReturn:
    """End the call with ``code`` and ``detail`` (and trailing metadata ``trailer``); raises, always."""
    await context.abort(code, detail, tuple(trailer))
    raise AssertionError("grpc.aio's abort returned")  # it raises AbortError
