"""Which bearer tokens a server accepts, and who a token names.

Two kinds of credential (README, "Access"):

- the service token (``serve --token``): an application that acts for its
  users (publishes their events, administers files); it may act for anyone;
- user tokens (``serve --user-token NAME=TOKEN``, ``--user-tokens FILE``): a
  token names its user, and reaches only that user's data.

A server without any token is a single-user tool: every caller acts as the
service. Tokens are looked up by their SHA-256, so a call costs one hash and a
dictionary look-up however many users there are, and no comparison's timing
depends on how much of a guess was right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who a call comes from, as its token says."""

    user: str | None  # the user a user token names; None: the service token, or a server without tokens

    @property
    def is_service(self) -> bool:
        """Whether the caller may act for any user."""
        return self.user is None

    def may_act_as(self, user: str) -> bool:
        """Whether the caller may read or write ``user``'s data."""
        return self.user is None or self.user == user


class Credentials:
    """The tokens a server accepts and the users they name; user tokens may be replaced while serving."""

    def __init__(
        self, shared: str | None = None, users: Mapping[str, str] | None = None, *, required: bool = False
    ) -> None:
        """``required``: refuse calls without a token even while no token is configured (a tokens file
        that is empty for now)."""
        self._shared = _digest(shared.encode()) if shared else None
        self._required = required
        self._users: dict[bytes, str] = {}
        self._names: frozenset[str] = frozenset()
        self._folded: frozenset[str] = frozenset()
        self.generation = 0  # counts replace_users: long-lived streams check their token again when it moves
        self.replace_users(users or {})

    def replace_users(self, users: Mapping[str, str]) -> None:
        """Accept exactly these user tokens (NAME -> TOKEN) from now on (a reload)."""
        self._users = {_digest(token.encode()): name for name, token in users.items()}
        self._names = frozenset(users)
        self._folded = frozenset(name.casefold() for name in users)
        self.generation += 1

    @property
    def enabled(self) -> bool:
        """Whether calls need a token."""
        return self._required or self._shared is not None or bool(self._users)

    @property
    def user_names(self) -> frozenset[str]:
        """The users that have a token: their names are theirs alone (in chat, say)."""
        return self._names

    def names_a_user(self, name: str) -> bool:
        """Whether ``name`` is, up to case, the name of a user with a token (``Bob`` would pass for ``bob``)."""
        return name.casefold() in self._folded

    def check(self, supplied: bytes) -> tuple[bool, str | None]:
        """(accepted, user) for an ``authorization`` value; user is None for the service token."""
        token = bearer_token(supplied)
        if token is None:
            return False, None
        digest = _digest(token)
        user = self._users.get(digest)
        if user is not None:
            return True, user
        return self._shared is not None and hmac.compare_digest(digest, self._shared), None

    def caller(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> Caller:
        """Who a call comes from (its token was checked on the way in; without auth, the service)."""
        return Caller(self.user_of(metadata))

    def user_of(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """The user a call's user token names, or None (service token, or auth off)."""
        supplied = authorization(metadata)
        return self.check(supplied)[1] if supplied is not None else None


class TokenWatch:
    """Tells a long-lived stream when its token no longer names its caller (the tokens were read again)."""

    def __init__(self, credentials: Credentials, metadata: Sequence[tuple[str, str | bytes]] | None) -> None:
        self._credentials = credentials
        self._metadata = metadata
        self._generation = credentials.generation
        self._caller = credentials.caller(metadata)

    def revoked(self) -> bool:
        """Whether the stream's token was withdrawn or given to another user since it began (an int
        comparison while the tokens have not changed)."""
        credentials = self._credentials
        if credentials.generation == self._generation:
            return False
        self._generation = credentials.generation
        supplied = authorization(self._metadata)
        if supplied is None:
            return credentials.enabled  # a call made without a token, where one is now needed
        accepted, user = credentials.check(supplied)
        return not accepted or user != self._caller.user


REVOKED = "this stream's token was withdrawn (the server read its tokens again)"


def _digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def authorization(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    """The value of a call's ``authorization`` metadata, or None when it has none."""
    for key, value in metadata or ():
        if key == "authorization":
            return value.encode() if isinstance(value, str) else value
    return None


def bearer_token(supplied: bytes) -> bytes | None:
    """The token of an ``authorization`` value ``Bearer <token>``; None if it names another scheme or none."""
    # The scheme name is case-insensitive (RFC 9110 section 11.1); the token is not.
    scheme, _, token = supplied.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()
