"""Bearer-token authentication for every RPC of every kind (health excepted)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from streamcli.credentials import Credentials, authorization, bearer_token
from streamcli.server.decoding import HANDLER_FACTORIES
from streamcli.services.rpc import abort

#: Methods callable without a token: load balancers and orchestrators probe health.
EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
#: The details of UNAUTHENTICATED when the ``authorization`` metadata is missing or names another scheme.
MISSING_TOKEN = (
    "missing bearer token: send the metadata 'authorization: Bearer <token>' (streamcli: --token or STREAMCLI_TOKEN)"
)
NOT_BEARER = (
    "invalid bearer token: send the metadata as 'authorization: Bearer <token>', not another scheme or a bare token"
)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Rejects calls whose ``authorization`` metadata is not ``Bearer <an accepted token>``.

    The rejection is a handler of the same kind as the real one that aborts
    with UNAUTHENTICATED, so streaming calls fail as cleanly as unary ones.
    """

    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(EXEMPT_PREFIXES):
            return handler
        supplied = authorization(handler_call_details.invocation_metadata)
        if supplied is not None and self._credentials.check(supplied)[0]:
            return handler
        # Callers may be generic tools (grpcurl, buf curl), not streamcli: name the metadata they must send.
        if supplied is None:
            detail = MISSING_TOKEN
        elif bearer_token(supplied) is None:
            detail = NOT_BEARER  # the value itself is not repeated: it may be a secret
        else:
            detail = "invalid bearer token"
        return _rejecting_handler(handler, detail)


def _rejecting_handler(like: grpc.RpcMethodHandler, detail: str) -> grpc.RpcMethodHandler:
    async def reject(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, detail)

    return HANDLER_FACTORIES[(like.request_streaming, like.response_streaming)](reject)
