"""Connection settings, kept free of grpc imports so the CLI starts fast."""

from __future__ import annotations

import dataclasses
import pathlib

from streamcli.transport import DEFAULT_ADDRESS

#: Retries after a lost server before giving up, by default: with the doubling delay capped at 8 s,
#: about three minutes, long enough for a server to restart. Tails, transfers and chat all wait this long.
#: (Here, not in client/retry.py: the CLI's options name it without importing grpc.)
RECONNECT_RETRIES = 25


@dataclasses.dataclass(frozen=True)
class ConnectionSettings:
    """How to reach a server (from flags or ``STREAMCLI_*`` variables)."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: bool = False  # implied by ca_cert / client_cert
    ca_cert: pathlib.Path | None = None  # trust this CA instead of the system roots
    client_cert: pathlib.Path | None = None  # for servers that require mTLS
    client_key: pathlib.Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_cert is not None or self.client_cert is not None
