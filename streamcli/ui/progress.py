"""Rich progress bars for transfers: one bar per file (bytes, speed, ETA) and a total."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from streamcli.client.progress import NullProgress, ProgressSink
from streamcli.terminal_text import visible


class RichTransferProgress:
    """A ProgressSink drawing rich bars on a console; use as a context manager."""

    def __init__(self, console: Console, *, with_total: bool) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._total = self._progress.add_task("total", total=0) if with_total else None

    def __enter__(self) -> RichTransferProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def start(self, key: str, description: str, total: int | None, completed: int = 0) -> None:
        if key in self._tasks:  # a retry: the server says where we stand now
            self._progress.update(self._tasks[key], completed=completed)
        else:
            # The description is a file name, maybe the server's: shown, never read as markup or escapes.
            shown = escape(visible(description))
            self._tasks[key] = self._progress.add_task(shown, total=total, completed=completed)
            if self._total is not None and total is not None:
                self._progress.update(self._total, total=(self._progress.tasks[self._total].total or 0) + total)
        self._shift_total(completed - self._done.get(key, 0))
        self._done[key] = completed

    def advance(self, key: str, amount: int) -> None:
        self._progress.advance(self._tasks[key], amount)
        self._done[key] = self._done.get(key, 0) + amount
        self._shift_total(amount)

    def finish(self, key: str) -> None:
        task = self._tasks[key]
        total = self._progress.tasks[task].total
        if total is None:  # a stream of unknown size: it is as long as it got
            self._progress.update(task, total=self._done.get(key, 0))

    def _shift_total(self, amount: int) -> None:
        if self._total is not None and amount:
            self._progress.advance(self._total, amount)


def transfer_progress(console: Console | None, count: int) -> RichTransferProgress | NullProgress:
    """Bars on ``console`` (a terminal's: ``Environment.progress_console``); nothing without one (pipes,
    scripts, tests)."""
    if console is None:
        return NullProgress()
    return RichTransferProgress(console, with_total=count > 1)


__all__ = ["ProgressSink", "RichTransferProgress", "transfer_progress"]
