"""The progress interface transfer code reports to (it never imports rich).

``streamcli.ui.rich_progress`` implements it with rich bars for terminals (``streamcli.ui.progress`` chooses);
``NullProgress`` does nothing, for pipes, scripts and tests.
"""

from __future__ import annotations

from typing import Protocol


class ProgressSink(Protocol):
    """Receives progress of named transfers."""

    def start(self, key: str, description: str, total: int | None, completed: int = 0) -> None:
        """A transfer of ``total`` bytes (None = unknown) begins, ``completed`` already done."""
        ...

    def advance(self, key: str, amount: int, records: int = 0) -> None:
        """``amount`` more bytes of transfer ``key`` are done (and ``records`` more records, for an ingest)."""
        ...

    def finish(self, key: str) -> None:
        """Transfer ``key`` is complete."""
        ...


class NullProgress:
    """A ProgressSink that shows nothing."""

    def start(self, key: str, description: str, total: int | None, completed: int = 0) -> None:
        pass

    def advance(self, key: str, amount: int, records: int = 0) -> None:
        pass

    def finish(self, key: str) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass
