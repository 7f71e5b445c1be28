"""The progress display of a transfer or an ingest: rich bars on a terminal, nothing elsewhere.

rich (its progress module alone takes about a tenth of a second of start-up) is imported only when there
is a terminal to draw on (``streamcli.ui.rich_progress``): a command in a script or a pipe does without.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamcli.client.progress import NullProgress, ProgressSink

if TYPE_CHECKING:
    from rich.console import Console

    from streamcli.ui.rich_progress import RichTransferProgress


def transfer_progress(
    console: Console | None, count: int, *, records: bool = False
) -> RichTransferProgress | NullProgress:
    """Bars on ``console`` (a terminal's: ``Environment.progress_console``); nothing without one (pipes,
    scripts, tests). ``records``: with records and records/s (batch ingest)."""
    if console is None:
        return NullProgress()
    from streamcli.ui.rich_progress import RichTransferProgress

    return RichTransferProgress(console, with_total=count > 1, records=records)


__all__ = ["ProgressSink", "transfer_progress"]
