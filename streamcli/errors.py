"""The streamcli exception tree and the exit codes the CLI maps it to.

::

    StreamcliError                     exit 1  (anything without a better code)
    ├── UsageError                     exit 2  bad option values, refused configuration
    ├── UnavailableError               exit 3  server unreachable, port taken, shutting down
    ├── NotFoundError                  exit 4
    ├── InvalidArgumentError           exit 5
    ├── AuthError                      exit 6  UNAUTHENTICATED / PERMISSION_DENIED
    ├── IntegrityError                 exit 7  DATA_LOSS, checksum mismatch
    ├── ResourceExhaustedError         exit 8  size limit, quota, rate limit
    ├── ConflictError                  exit 9  FAILED_PRECONDITION, ALREADY_EXISTS, ABORTED, OUT_OF_RANGE
    ├── DeadlineError                  exit 10 DEADLINE_EXCEEDED
    ├── UnimplementedError             exit 11 the server does not offer this RPC
    ├── LocalFileError                 exit 13 a local file is in the way (it exists) or changed under us
    └── Interrupted                    exit 130 Ctrl-C

(Exit 12, ``ExitStatus.REFUSED_RECORDS``, is no error: ``batch ingest`` stored what it could.)

Domain and client code raise these; only the CLI's error
boundary (``streamcli.cli.main.main``) turns them into a message and a code.
This module must stay cheap to import: it does not import grpc.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc


class ExitStatus(enum.IntEnum):
    """Process exit codes of the ``streamcli`` command (documented in README)."""

    SUCCESS = 0
    ERROR = 1  # an unexpected or unclassified failure
    USAGE = 2  # bad command line or refused configuration
    UNAVAILABLE = 3  # cannot reach the server / cannot bind / server shutting down
    NOT_FOUND = 4  # the named file, upload, room... does not exist
    INVALID_ARGUMENT = 5  # the server rejected a request as malformed
    AUTH = 6  # missing or wrong token, not allowed
    INTEGRITY = 7  # data corrupted in transit or at rest (checksum mismatch)
    RESOURCE_EXHAUSTED = 8  # size limit, quota, disk full, rate limit
    CONFLICT = 9  # state disagrees: resume offset, trimmed history, already exists
    TIMEOUT = 10  # a deadline expired
    UNIMPLEMENTED = 11  # the server does not implement this RPC
    REFUSED_RECORDS = 12  # batch ingest: some input records were refused (the others are stored)
    LOCAL_CONFLICT = 13  # a local file is in the way (exists without --force, a link at NAME.part) or changed
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
    BROKEN_PIPE = 141  # stdout's reader went away (`| head`): quietly, as if killed by SIGPIPE (128 + 13)


class StreamcliError(Exception):
    """Base of every expected failure; carries the exit status to use."""

    exit_status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(StreamcliError):
    """The command line or configuration is not acceptable."""

    exit_status = ExitStatus.USAGE


class UnavailableError(StreamcliError):
    """The server cannot be reached, or an address cannot be bound."""

    exit_status = ExitStatus.UNAVAILABLE


class NotFoundError(StreamcliError):
    """The named object does not exist."""

    exit_status = ExitStatus.NOT_FOUND


class InvalidArgumentError(StreamcliError):
    """A request was rejected as malformed."""

    exit_status = ExitStatus.INVALID_ARGUMENT


class AuthError(StreamcliError):
    """Authentication failed or the caller is not allowed."""

    exit_status = ExitStatus.AUTH


class IntegrityError(StreamcliError):
    """Data failed verification (checksum mismatch, DATA_LOSS)."""

    exit_status = ExitStatus.INTEGRITY


class ResourceExhaustedError(StreamcliError):
    """A size limit, quota or rate limit was hit."""

    exit_status = ExitStatus.RESOURCE_EXHAUSTED


class ConflictError(StreamcliError):
    """The request disagrees with the server's state."""

    exit_status = ExitStatus.CONFLICT


class LocalFileError(StreamcliError):
    """What is on the local disk is in the way: the destination exists, or is not what may be replaced."""

    exit_status = ExitStatus.LOCAL_CONFLICT


class DeadlineError(StreamcliError):
    """A deadline expired before the operation completed."""

    exit_status = ExitStatus.TIMEOUT


class UnimplementedError(StreamcliError):
    """The server does not implement the requested RPC."""

    exit_status = ExitStatus.UNIMPLEMENTED


class Interrupted(StreamcliError):
    """The user pressed Ctrl-C."""

    exit_status = ExitStatus.INTERRUPTED


# Status code name -> exception class. Keyed by name so this module needs no grpc.
_BY_STATUS: dict[str, type[StreamcliError]] = {
    "UNAVAILABLE": UnavailableError,
    "NOT_FOUND": NotFoundError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": AuthError,
    "DATA_LOSS": IntegrityError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "FAILED_PRECONDITION": ConflictError,
    "ALREADY_EXISTS": ConflictError,
    "ABORTED": ConflictError,
    "OUT_OF_RANGE": ConflictError,
    "DEADLINE_EXCEEDED": DeadlineError,
    "UNIMPLEMENTED": UnimplementedError,
}


def error_for_status(code: grpc.StatusCode, details: str | None, *, address: str = "") -> StreamcliError:
    """Build the StreamcliError matching a gRPC status.

    Args:
        code: the status code the call ended with.
        details: the status details the server (or the library) gave.
        address: the server address, named in connection failures.

    Returns:
        An exception whose class (and so exit status) follows the code.
    """
    name = code.name
    details = (details or "").strip() or name.lower().replace("_", " ")
    cls = _BY_STATUS.get(name, StreamcliError)
    if name == "UNAVAILABLE" and address:
        return cls(f"cannot reach the server at {address}: {details}")
    if name == "CANCELLED":
        return cls(f"call cancelled: {details}")
    return cls(details)
