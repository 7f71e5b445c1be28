"""The rich transfer display: one bar per file plus a total that follows resumes and retries."""

from __future__ import annotations

import io

from rich.console import Console

from streamcli.ui.rich_progress import RecordRateColumn, RichTransferProgress


def test_bars_and_total_follow_starts_resumes_and_retries() -> None:
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=True)
    with RichTransferProgress(console, with_total=True) as progress:
        progress.start("a", "a.bin", 1000)
        progress.start("b", "b.bin", 500, completed=200)  # resumed: 200 bytes were already there
        progress.advance("a", 300)
        progress.start("a", "a.bin", 1000, completed=250)  # a retry: the server had only 250
        progress.advance("b", 300)
        progress.finish("b")
        tasks = {task.description: task for task in progress._progress.tasks}
    assert (tasks["a.bin"].completed, tasks["a.bin"].total) == (250, 1000)
    assert (tasks["b.bin"].completed, tasks["b.bin"].total) == (500, 500)
    assert (tasks["total"].completed, tasks["total"].total) == (750, 1500)
    assert "a.bin" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_hostile_file_name_is_shown_not_obeyed() -> None:
    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=True)
    with RichTransferProgress(console, with_total=False) as progress:
        progress.start("a", "\x1b]0;PWNED\x07[link=https://evil.example]x[/link]", 10)
        progress.advance("a", 10)
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "\\x1b]0;PWNED\\x07[link=https://evil.example]x[/link]" in shown  # markup shown as typed, escaped
    assert "PWNED\x07" not in shown and "evil.example\x1b" not in shown


def test_an_ingest_bar_counts_records_and_shows_their_rate() -> None:
    console = Console(file=io.StringIO(), width=160, color_system=None, force_terminal=True)
    with RichTransferProgress(console, with_total=True, records=True) as progress:
        progress.start("a", "a.ndjson", 1000)
        progress.start("b", "b.ndjson", 500)
        progress.advance("a", 400, records=1200)
        progress.advance("b", 100, records=300)
        progress.advance("a", 100, records=300)
        tasks = {task.description: task for task in progress._progress.tasks}
        shown = RecordRateColumn().render(tasks["a.ndjson"]).plain
    assert (tasks["a.ndjson"].fields["records"], tasks["a.ndjson"].completed) == (1500, 500)
    assert (tasks["total"].fields["records"], tasks["total"].completed) == (1800, 600)
    assert shown.startswith("1,500 rec ") and shown.endswith(" rec/s")
    assert "rec/s" in console.file.getvalue()  # type: ignore[attr-defined]
