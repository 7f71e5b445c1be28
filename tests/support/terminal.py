"""Real terminals for tests: a private tmux server whose sessions are real pseudo-terminals."""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import time
import uuid
from collections.abc import Callable


class Tmux:
    """A private tmux server; each session is a real pseudo-terminal."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.socket = f"streamcli-test-{uuid.uuid4().hex[:8]}"
        self.directory = directory

    def run(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True)
        return result.stdout

    def start(self, name: str, command: list[str]) -> None:
        env = {"XDG_STATE_HOME": str(self.directory / name), "TERM": "xterm-256color", "NO_COLOR": "1"}
        line = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)
        self.run("new-session", "-d", "-s", name, "-x", "100", "-y", "20", f"env {line}")

    def screen(self, name: str) -> list[str]:
        return [line.rstrip() for line in self.run("capture-pane", "-p", "-t", name).splitlines()]

    def wait_for(self, name: str, text: str, timeout: float = 15) -> list[str]:
        return self.wait_until(name, lambda lines: any(text in line for line in lines), repr(text), timeout)

    def wait_until(self, name: str, shown: Callable[[list[str]], bool], what: str, timeout: float = 15) -> list[str]:
        """The first screen of ``name`` for which ``shown`` holds (a screen caught mid-redraw is passed over)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.screen(name)
            if shown(lines):
                return lines
            time.sleep(0.1)
        raise AssertionError(f"{what} never appeared on {name}'s screen:\n" + "\n".join(self.screen(name)))

    def wait_for_exit(self, name: str, timeout: float = 15) -> None:
        """Wait until the session's command has ended (its session is gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            gone = subprocess.run(["tmux", "-L", self.socket, "has-session", "-t", name], capture_output=True)
            if gone.returncode != 0:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} still runs:\n" + "\n".join(self.screen(name)))

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)
