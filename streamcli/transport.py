"""gRPC channel and server options shared by both halves of streamcli.

Keepalive is configured on both sides so that idle long-lived streams (a
``tail`` that waits for events, a quiet chat room) survive NAT and proxies, and
so that the server never answers the client's pings with GOAWAY
("too_many_pings"): the client pings every ``CLIENT_KEEPALIVE_TIME_MS``, which is
above the server's ``MIN_PING_INTERVAL_MS``, and the server does not count
strikes. This module imports nothing heavy; values are plain tuples.
"""

from __future__ import annotations

from typing import Final

#: Where the server listens and clients connect unless told otherwise.
DEFAULT_ADDRESS: Final = "127.0.0.1:50051"

#: Largest gRPC message either side accepts, in bytes (the gRPC default).
MAX_MESSAGE_BYTES: Final = 4 * 1024 * 1024

#: The client pings an idle connection this often (ms).
CLIENT_KEEPALIVE_TIME_MS: Final = 30_000
#: The server pings an idle connection this often (ms).
SERVER_KEEPALIVE_TIME_MS: Final = 60_000
#: A ping unanswered for this long closes the connection (ms).
KEEPALIVE_TIMEOUT_MS: Final = 20_000
#: The server accepts client pings this close together without a strike (ms).
MIN_PING_INTERVAL_MS: Final = 10_000

#: Longest pause of a channel between attempts to connect to a server that is down (ms).
MAX_RECONNECT_BACKOFF_MS: Final = 8_000

Options = list[tuple[str, int | str]]


def server_options() -> Options:
    """Channel arguments for ``grpc.aio.server``."""
    return [
        # A taken port must fail the bind, not be silently shared.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        # 0 = never send GOAWAY for "too many pings".
        ("grpc.http2.max_ping_strikes", 0),
    ]


def client_options() -> Options:
    """Channel arguments for ``grpc.aio`` client channels."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # 0 = keep pinging an idle stream instead of stopping after two pings.
        ("grpc.http2.max_pings_without_data", 0),
        # Each channel connects on its own. By default channels to one address share their connections
        # and so their reconnect backoff (which grows to minutes): a fresh channel opened because the
        # server is back (the chat REPL's /join) would fail at once with the old error.
        ("grpc.use_local_subchannel_pool", 1),
        # The backoff between gRPC's own connection attempts stays within that of our retries
        # (RetryPolicy.max_delay), instead of growing to two minutes while the server is long gone.
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a listen address ``HOST:PORT`` or ``[V6]:PORT``; port 0-65535.

    Raises:
        UsageError: the address is malformed.
    """
    from streamcli.errors import UsageError

    host = split_host(address)
    port_text = address.rpartition(":")[2]
    if not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or address.startswith("unix:"):
        raise UsageError(
            f"invalid address {address!r}: expected HOST:PORT with a port of 0-65535, e.g. 127.0.0.1:50051"
        )
    return (f"[{host}]" if ":" in host else host), int(port_text)


def is_loopback_address(address: str) -> bool:
    """True when ``host:port`` names a loopback interface only."""
    host = split_host(address)
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(address: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port``, brackets removed."""
    if address.startswith("unix:"):
        return "localhost"
    if address.startswith("["):
        return address[1 : address.find("]")]
    host, separator, _ = address.rpartition(":")
    return host if separator else address


#: Schemes ``--address`` understands, and whether each means TLS.
_SCHEMES: Final = {"http": False, "grpc": False, "https": True, "grpcs": True}
#: The port of a URL without one, by scheme (``https://host`` is port 443, as for curl and buf curl).
_URL_PORTS: Final = {"http": 80, "https": 443}
#: gRPC's own target schemes, passed on as written.
_GRPC_TARGETS: Final = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")


def client_addresses(address: str) -> list[str]:
    """The addresses of a client's ``--address``: one, or several separated by commas (``A,B``, as
    etcdctl's ``--endpoints`` and Kafka's ``--bootstrap-server`` take them), each as written.

    gRPC's own targets are one address as written, commas and all (``ipv4:10.0.0.1:1,10.0.0.2:1`` is
    gRPC's own list, which gRPC tries in order).

    Raises:
        UsageError: an empty entry in a list (``A,,B``, ``A,``).
    """
    from streamcli.errors import UsageError

    text = address.strip()
    if "," not in text or text.startswith(_GRPC_TARGETS):
        return [address]
    entries = [entry.strip() for entry in text.split(",")]
    if not all(entries):
        raise UsageError(f"--address {text}: an empty address in the list; write HOST:PORT,HOST:PORT")
    return entries


def client_target(address: str) -> tuple[str, bool | None]:
    """The gRPC target of a client's ``--address`` and whether its scheme asks for TLS.

    ``HOST:PORT``, ``HOST`` (the server's default port, not gRPC's 443), ``[V6]:PORT``,
    ``http://``/``grpc://`` (plaintext), ``https://``/``grpcs://`` (TLS), and gRPC's own targets
    (``unix:PATH``, ``dns:///HOST:PORT``...) as written. The second value is None without a scheme.

    Raises:
        UsageError: what cannot be an address, with how to write it.
    """
    from streamcli.errors import UsageError

    text = address.strip()
    if not text:
        raise UsageError("the server address is empty: give --address HOST:PORT, e.g. 127.0.0.1:50051")
    if text.startswith(_GRPC_TARGETS):
        return text, None
    scheme, separator, rest = text.partition("://")
    tls: bool | None = None
    default_port = int(DEFAULT_ADDRESS.rpartition(":")[2])
    if separator:
        if scheme.lower() not in _SCHEMES:
            raise UsageError(
                f"--address {text}: unknown scheme {scheme}://; write HOST:PORT (plaintext), "
                "https://HOST:PORT (TLS) or http://HOST:PORT"
            )
        tls = _SCHEMES[scheme.lower()]
        default_port = _URL_PORTS.get(scheme.lower(), default_port)
        if rest.rstrip("/").count("/") or "?" in rest or "#" in rest:
            raise UsageError(f"--address {text}: a gRPC address has no path; write {scheme}://HOST:PORT")
        text = rest.rstrip("/")
    if "@" in text:
        raise UsageError(f"--address {address.strip()}: no user in the address; give a token with --token")
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
        host = f"[{host}]"
    elif text.count(":") > 1:  # a bare IPv6 address: no port
        host, port = f"[{text}]", ""
    else:
        host, _, port = text.partition(":")
    if not host or host == "[]":
        raise UsageError(f"--address {address.strip()}: no host; write HOST:PORT, e.g. 127.0.0.1:50051")
    if not port:
        return f"{host}:{default_port}", tls
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise UsageError(f"--address {address.strip()}: the port must be a number of 1-65535, e.g. {host}:50051")
    return f"{host}:{int(port)}", tls
