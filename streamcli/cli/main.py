"""The console-script entry point and the CLI's only error boundary.

``main`` runs the command tree and turns every expected failure into one line
on stderr and an exit code from ``streamcli.errors.ExitStatus``: the commands'
own failures, click's usage errors, Ctrl-C and a closed stdout. Commands never
catch exceptions themselves.
"""

from __future__ import annotations

# Nothing else at module level: a Ctrl-C is only reported once ``run``/``main`` runs, so the
# console script must get there fast; everything else is imported inside ``main``.
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the idiom)
if TYPE_CHECKING:
    from collections.abc import Sequence

    from typer._click.exceptions import UsageError

    from streamcli.cli.environment import Environment
    from streamcli.errors import ExitStatus

_INTERRUPTED = 130  # ExitStatus.INTERRUPTED, for when streamcli.errors may not be imported yet


def main(argv: Sequence[str] | None = None, env: Environment | None = None) -> int:
    """Run ``streamcli`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    try:
        from streamcli.cli.environment import Environment

        env = env or Environment()
        return _run(argv, env)
    except KeyboardInterrupt as exc:
        # Ctrl-C while starting (importing typer, rich, grpc...) or while a failure was reported.
        return _interrupted(env, exc)


def _run(argv: Sequence[str] | None, env: Environment) -> int:
    """``main`` without its Ctrl-C guard: run the command tree and map what it raises."""
    import typer.main

    # typer vendors click here; these are the exceptions its parser raises.
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from streamcli.cli.app import command_tree
    from streamcli.cli.argv import global_options_first
    from streamcli.errors import ExitStatus, StreamcliError

    # gRPC's C core logs (to stderr) what we already report in one line; `--traceback` shows it too.
    if "GRPC_VERBOSITY" not in os.environ:
        os.environ["GRPC_VERBOSITY"] = "ERROR" if "--traceback" in (argv or sys.argv) else "NONE"

    command = command_tree()
    args = global_options_first(command, sys.argv[1:] if argv is None else argv)
    try:
        # Not standalone: click raises its errors to us instead of printing a box and exiting.
        # It still handles --help and --version, and returns the code of a typer.Exit.
        result = command.main(args=args, prog_name="streamcli", obj=env, standalone_mode=False)
    except SystemExit as exit_:
        if isinstance(exit_.__context__, BrokenPipeError):
            return _stdout_closed(env)  # typer turns a broken pipe into sys.exit(1) while handling it
        return _exit_code(exit_.code)
    except NoArgsIsHelpError:
        return ExitStatus.USAGE  # a group without its command: typer has printed the group's help
    except UsageError as exc:
        return _fail(env, exc, _usage_message(exc), ExitStatus.USAGE)
    except ClickException as exc:
        return _fail(env, exc, _one_line(exc.format_message()), ExitStatus.ERROR)
    except typer.Abort as exc:  # end of input at a prompt
        return _fail(env, exc, "aborted", ExitStatus.ERROR)
    except StreamcliError as exc:
        return _fail(env, exc, exc.message, exc.exit_status)
    except Exception as exc:
        if isinstance(exc, BrokenPipeError):
            return _stdout_closed(env)
        # A bug, not an expected failure: always show the traceback.
        env.traceback = True
        return _fail(env, exc, f"unexpected {type(exc).__name__}: {exc}", ExitStatus.ERROR)
    if result == ExitStatus.INTERRUPTED:
        # typer turns a Ctrl-C outside Environment.run (parsing, imports in a command) into Exit(130).
        env.error("interrupted")
    return _exit_code(result)


def _usage_message(exc: UsageError) -> str:
    """Click's message on one line, with where to get help."""
    ctx = exc.ctx
    message = _one_line(exc.format_message())
    message = message[:1].lower() + message[1:]  # like our own messages
    if ctx is not None:
        message = f"{message.rstrip('.')} (see {ctx.command_path} --help)"
    return message


def _one_line(message: str) -> str:
    return " ".join(message.split())


def _exit_code(code: object) -> int:
    from streamcli.errors import ExitStatus

    if code is None:
        return ExitStatus.SUCCESS
    if isinstance(code, int):
        return code
    return ExitStatus.ERROR


def _fail(env: Environment, exc: BaseException, message: str, status: ExitStatus) -> int:
    if env.traceback:
        import traceback

        traceback.print_exception(exc, file=env.stderr)
    env.error(message)
    return int(status)


def _interrupted(env: Environment | None, exc: KeyboardInterrupt) -> int:
    if env is None:  # interrupted before the Environment existed: its error() format, by hand
        sys.stderr.write("streamcli: error: interrupted\n")
        sys.stderr.flush()
        return _INTERRUPTED
    from streamcli.errors import ExitStatus

    return _fail(env, exc, "interrupted", ExitStatus.INTERRUPTED)


def _stdout_closed(env: Environment) -> int:
    """The reader of stdout went away (``| head``): exit quietly, as if killed by SIGPIPE."""
    from streamcli.errors import ExitStatus

    # What is still buffered for stdout would fail again when Python flushes it at exit
    # ("Exception ignored ... BrokenPipeError"): let it go to /dev/null instead.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, env.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass  # not a real file (tests) or already closed: nothing to flush at exit
    return ExitStatus.BROKEN_PIPE


def run() -> None:
    """Console-script entry point: ``sys.exit(main())``."""
    try:
        status = main()
    except KeyboardInterrupt:
        # A second Ctrl-C while main() was reporting the first.
        status = _INTERRUPTED
    _skip_final_collection()
    sys.exit(status)


def _skip_final_collection() -> None:
    """Leave every object to the process's end rather than to the collector's last passes.

    Python's shutdown runs full garbage collections over every object the process made, grpc's and
    protobuf's modules and typer's included: 0.1-0.2 s of CPU between the command's last line and the
    exit the user (or a script) waits for, after every command (measured in bench/README.md, "File
    transfer"). Frozen objects are left out of those passes; the modules are still torn down, the
    standard streams flushed and the files closed. Not in ``main``: a test process calls it again and
    again, and frozen objects are never collected.
    """
    import gc

    gc.freeze()
