"""The console-script entry point and the CLI's only error boundary.

``main`` runs the command tree and turns every expected failure into one line
on stderr and an exit code from ``streamcli.errors.ExitStatus``. Commands never
catch exceptions themselves.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from streamcli.cli.environment import Environment
from streamcli.errors import ExitStatus, StreamcliError, error_for_status


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run ``streamcli`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    import typer.main

    from streamcli.cli.app import app

    # gRPC's C core logs (to stderr) what we already report in one line; `--traceback` shows it too.
    if "GRPC_VERBOSITY" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "ERROR" if "--traceback" in (argv or sys.argv) else "NONE"

    env = env or Environment()
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="streamcli", obj=env, standalone_mode=True)
    except SystemExit as exit_:
        return _exit_code(exit_.code)
    except StreamcliError as exc:
        return _fail(env, exc, exc.message, exc.exit_status)
    except KeyboardInterrupt as exc:
        return _fail(env, exc, "interrupted", ExitStatus.INTERRUPTED)
    except Exception as exc:
        grpc = sys.modules.get("grpc")
        if grpc is not None and isinstance(exc, grpc.aio.AioRpcError):
            translated = error_for_status(exc.code(), exc.details(), address=env.connection.address)
            return _fail(env, exc, translated.message, translated.exit_status)
        if isinstance(exc, BrokenPipeError):
            return ExitStatus.ERROR  # the reader went away (e.g. `| head`): nothing to say
        # A bug, not an expected failure: always show the traceback.
        env.traceback = True
        return _fail(env, exc, f"unexpected {type(exc).__name__}: {exc}", ExitStatus.ERROR)
    return ExitStatus.SUCCESS


def _exit_code(code: object) -> int:
    if code is None:
        return ExitStatus.SUCCESS
    if isinstance(code, int):
        return code
    return ExitStatus.ERROR


def _fail(env: Environment, exc: BaseException, message: str, status: ExitStatus) -> int:
    if env.traceback:
        traceback.print_exception(exc, file=env.stderr)
    env.error(message)
    return int(status)


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    sys.exit(main())
