"""What a connection that failed while it was being set up says about TLS.

gRPC reports a TLS/plaintext mismatch only as "Socket closed" (a plaintext client at a TLS server,
a client without a certificate at a server that requires one) or as an OpenSSL error
(``WRONG_VERSION_NUMBER``: a TLS client at a plaintext server). ``diagnose`` turns those into a
configuration error (exit 2) that says what to change. "Socket closed" has other causes, so it is
only called a mismatch after a TLS handshake of our own with the server (``_probe``) shows it.
"""

from __future__ import annotations

import enum
import socket
import ssl

from streamcli.client.settings import ConnectionSettings
from streamcli.errors import UsageError

#: The longest a probe may take, connecting and then reading (seconds).
PROBE_TIMEOUT = 2.0
#: What an HTTP/2 client sends first; a gRPC server answers it with its SETTINGS.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Server(enum.Enum):
    TLS = "answers a TLS client"
    CLIENT_CERTIFICATE = "closes a TLS connection without a client certificate"
    OTHER = "none of these (not reachable, or not TLS)"


def diagnose(settings: ConnectionSettings, target: str, details: str) -> UsageError | None:
    """The configuration error behind a failed connection to ``target``, or None when it is not one."""
    if settings.uses_tls and "WRONG_VERSION_NUMBER" in details:
        return UsageError(
            f"the server at {target} does not use TLS (it answered in plaintext): "
            "connect without --tls, --ca-cert and --client-cert, or with http://"
        )
    if not details.rstrip().endswith("Socket closed"):
        return None
    if settings.client_cert is not None:
        return None  # a certificate was given: nothing more to learn from a probe without one
    server = _probe(target)
    if server is _Server.OTHER:
        return None
    if not settings.uses_tls:
        needs = (
            " and a client certificate (--client-cert, --client-key)" if server is _Server.CLIENT_CERTIFICATE else ""
        )
        return UsageError(
            f"TLS/plaintext mismatch: the server at {target} uses TLS and this client connected in "
            f"plaintext: add --tls (with --ca-cert CA.pem for a private CA){needs}, or write https://{target}"
        )
    if server is _Server.CLIENT_CERTIFICATE:
        return UsageError(
            f"the server at {target} requires a client certificate (mTLS): give --client-cert and --client-key"
        )
    return None


def _probe(target: str) -> _Server:
    """Whether the server at ``target`` (``HOST:PORT``) speaks TLS, by a handshake without verification.

    Nothing is trusted or sent but the HTTP/2 preface: the handshake only tells what the server speaks.
    """
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or not host:
        return _Server.OTHER  # a gRPC target such as unix:PATH
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(_HTTP2_PREFACE)
            try:
                answer = tls.recv(9)
            except ssl.SSLError:  # an alert instead of SETTINGS: TLS 1.3's "certificate required"
                return _Server.CLIENT_CERTIFICATE
            return _Server.TLS if answer else _Server.CLIENT_CERTIFICATE
    except (OSError, ValueError):  # ssl.SSLError is an OSError: the server does not speak TLS
        return _Server.OTHER
