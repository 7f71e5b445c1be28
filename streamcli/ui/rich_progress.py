"""Rich progress bars for transfers and ingests: one bar per file (bytes, speed, ETA; records and records/s for
an ingest) and a total. Imported only when there is a terminal to draw them on (``streamcli.ui.progress``)."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from streamcli.terminal_text import visible


class RecordRateColumn(ProgressColumn):
    """Records done and their rate: ``12,500 rec 41,200 rec/s`` (from a task's ``records`` field)."""

    def render(self, task: Task) -> Text:
        records = int(task.fields.get("records", 0))
        elapsed = task.elapsed
        rate = f"{records / elapsed:,.0f}" if elapsed else "?"
        return Text(f"{records:,} rec {rate} rec/s", style="progress.data.speed")


class RichTransferProgress:
    """A ProgressSink drawing rich bars on a console; use as a context manager. ``records``: also count
    records (``advance(..., records=N)``) and show their rate (batch ingest)."""

    def __init__(self, console: Console, *, with_total: bool, records: bool = False) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            *((RecordRateColumn(),) if records else ()),
            TimeRemainingColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._total = self._progress.add_task("total", total=0, records=0) if with_total else None

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
            self._tasks[key] = self._progress.add_task(shown, total=total, completed=completed, records=0)
            if self._total is not None and total is not None:
                self._progress.update(self._total, total=(self._progress.tasks[self._total].total or 0) + total)
        self._shift_total(completed - self._done.get(key, 0))
        self._done[key] = completed

    def advance(self, key: str, amount: int, records: int = 0) -> None:
        task = self._tasks[key]
        if records:
            self._count(task, records)
            if self._total is not None:
                self._count(self._total, records)
        self._progress.advance(task, amount)
        self._done[key] = self._done.get(key, 0) + amount
        self._shift_total(amount)

    def _count(self, task: TaskID, records: int) -> None:
        done = self._progress.tasks[task].fields.get("records", 0)
        self._progress.update(task, records=done + records)

    def finish(self, key: str) -> None:
        task = self._tasks[key]
        total = self._progress.tasks[task].total
        if total is None:  # a stream of unknown size: it is as long as it got
            self._progress.update(task, total=self._done.get(key, 0))

    def _shift_total(self, amount: int) -> None:
        if self._total is not None and amount:
            self._progress.advance(self._total, amount)
