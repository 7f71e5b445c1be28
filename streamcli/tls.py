"""Reading and checking TLS material for both the server and clients."""

from __future__ import annotations

import pathlib
import ssl

from streamcli.errors import UsageError


def read_pem(path: pathlib.Path, what: str) -> bytes:
    """The bytes of a PEM file, or a UsageError naming ``what`` could not be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def check_pair(cert: pathlib.Path | None, key: pathlib.Path | None, cert_flag: str, key_flag: str) -> None:
    """Both or neither must be given; when both are, they must load as a matching pair."""
    if (cert is None) != (key is None):
        raise UsageError(f"{cert_flag} and {key_flag} must be given together")
    if cert is None or key is None:
        return
    read_pem(cert, "certificate")
    read_pem(key, "key")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise UsageError(f"invalid TLS certificate {cert} or key {key}: {exc.reason or exc}") from exc


def read_certificates(path: pathlib.Path, what: str) -> bytes:
    """The bytes of a PEM file of certificates (a CA bundle), or a UsageError saying it is not one."""
    data = read_pem(path, what)
    try:
        ssl.create_default_context(cadata=data.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise UsageError(
            f"{what} {path} is not a PEM certificate: give a file that starts -----BEGIN CERTIFICATE-----"
        ) from exc
    return data
