"""Run the CLI in-process (``streamcli.cli.main.main``) with string streams, as a user would call it."""

from __future__ import annotations

import io

from streamcli.cli.environment import Environment
from streamcli.cli.main import main


class Run:
    """What one in-process ``streamcli`` run printed, and its exit code."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def error_lines(self) -> list[str]:
        return self.err.splitlines()


def cli(address: str, *args: str, stdout: io.TextIOBase | None = None) -> Run:
    """Run ``streamcli --address ADDRESS ARGS`` in-process with string streams."""
    out = stdout if stdout is not None else io.StringIO()
    env = Environment(stdin=io.StringIO(), stdout=out, stderr=io.StringIO())  # type: ignore[arg-type]
    code = main(["--address", address, *args], env)
    text = out.getvalue() if isinstance(out, io.StringIO) else ""
    return Run(code, text, env.stderr.getvalue())  # type: ignore[attr-defined]
