"""Which bearer tokens a server accepts, and who a token names.

One shared token (callers say who they are themselves, e.g. ``chat --user``)
and/or per-user tokens, which fix the caller's identity: services ask
``Credentials.user_of`` and ignore the name the client claims.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence


class Credentials:
    """The tokens a server accepts and the users they name."""

    def __init__(self, shared: str | None = None, users: Mapping[str, str] | None = None) -> None:
        self._tokens: list[tuple[bytes, str | None]] = [(t.encode(), u) for u, t in (users or {}).items()]
        if shared:
            self._tokens.append((shared.encode(), None))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def check(self, supplied: bytes) -> tuple[bool, str | None]:
        """(accepted, user) for an ``authorization`` value; user is None for the shared token."""
        token = bearer_token(supplied)
        if token is None:
            return False, None
        found: tuple[bool, str | None] = (False, None)
        for expected, user in self._tokens:  # compare with every token: timing says nothing about which
            if hmac.compare_digest(token, expected):
                found = (True, user)
        return found

    def user_of(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The user a call's per-user token names, or None (shared token, or auth off)."""
        for key, value in metadata or ():
            if key == "authorization":
                return self.check(value.encode() if isinstance(value, str) else value)[1]
        return None


def bearer_token(supplied: bytes) -> bytes | None:
    """The token of an ``authorization`` value ``Bearer <token>``; None if it names another scheme or none."""
    # The scheme name is case-insensitive (RFC 9110 section 11.1); the token is not.
    scheme, _, token = supplied.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()
