"""Metric series for people: a table of their aggregates, and pictures of one series' distribution and trend."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from streamcli.client.metrics import SeriesSummary, TrendPoint
from streamcli.terminal_text import visible

#: The quantiles ``metrics show`` asks for to draw a distribution: the middle of each percent of the samples.
PICTURE_QUANTILES = tuple((n + 0.5) / 100 for n in range(100))
BAR = 40  # characters of the longest bar
BINS = 16
#: Steps of the trend ``metrics show`` asks for (a character each in the picture).
TREND_POINTS = 60
#: A sparkline's characters, lowest to highest (a step without samples is a space).
SPARKS = "▁▂▃▄▅▆▇█"


def number(value: float) -> str:
    """A value in at most about 9 characters (``1234.57``, ``1.2346e+09``)."""
    return f"{value:.6g}"


def series_table(series: Sequence[SeriesSummary], *, title: str | None = None) -> Table:
    """One row per series: count, min, mean, p50, p90, p99, max (and the owner, when any series has one)."""
    owners = any(s.owner for s in series)
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    table.add_column("SERIES", overflow="fold")
    if owners:
        table.add_column("OWNER")
    for column in ("COUNT", "MIN", "MEAN", "P50", "P90", "P99", "MAX"):
        table.add_column(column, justify="right", no_wrap=True)
    for s in series:
        owner = [Text(visible(s.owner))] if owners else []
        values = (s.min, s.mean, s.p50, s.p90, s.p99, s.max)
        table.add_row(Text(visible(s.title)), *owner, str(s.count), *(number(v) for v in values))
    return table


def distribution(series: SeriesSummary) -> Table:
    """A histogram of the series' values drawn from its percentiles (``PICTURE_QUANTILES``): each percentile
    stands for 1% of the samples, counted in the bin of equal width (on a log scale when the values are all
    positive and span more than two decades) it falls in."""
    values = [value for _, value in series.quantiles]
    table = Table(box=None, show_header=False, title=f"distribution of {visible(series.title)}", title_justify="left")
    table.add_column(justify="right", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    if not values:
        return table
    low, high = min(values), max(values)
    logarithmic = low > 0 and high / low > 100
    scale = (lambda v: math.log10(v)) if logarithmic else (lambda v: v)
    start, end = scale(low), scale(high)
    width = (end - start) / BINS or 1.0
    counts = [0] * BINS
    for value in values:
        counts[min(BINS - 1, int((scale(value) - start) / width))] += 1
    top = max(counts)
    for n, count in enumerate(counts):
        edge = start + n * width
        lower = 10**edge if logarithmic else edge
        bar = "█" * round(BAR * count / top) if count else ""
        table.add_row(number(lower), Text(bar, style="cyan"), f"{100 * count / len(values):.0f}%")
    table.caption = "log scale" if logarithmic else None
    return table


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, its height scaled from the smallest to the largest value (a space for None;
    the middle height when all are equal)."""
    present = [v for v in values if v is not None]
    if not present:
        return " " * len(values)
    low, high = min(present), max(present)
    top = len(SPARKS) - 1
    if high == low:
        return "".join(" " if v is None else SPARKS[top // 2] for v in values)
    return "".join(" " if v is None else SPARKS[round(top * (v - low) / (high - low))] for v in values)


def has_trend(series: SeriesSummary) -> bool:
    """Whether the series' trend is worth a picture: at least two of its steps hold samples."""
    return sum(1 for point in series.trend if point.count) >= 2


def trend(series: SeriesSummary) -> Group:
    """The series' trend (``SeriesSummary.trend``): p50, p99 and the count of each step as sparklines, oldest
    on the left, each with its range; a blank where a step has no samples."""
    points = series.trend
    step = points[0].minutes if points else 1
    span = f"{points[0].start} to {_end(points[-1])}" if points else ""
    title = Text(f"trend of {visible(series.title)}, {span}, {_minutes(step)} a character", style="italic")
    table = Table(box=None, show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True)
    rows: list[tuple[str, list[float | None], str]] = [
        ("p50", [p.p50 if p.count else None for p in points], "cyan"),
        ("p99", [p.p99 if p.count else None for p in points], "magenta"),
        ("count", [float(p.count) if p.count else None for p in points], "green"),
    ]
    for label, values, style in rows:
        present = [v for v in values if v is not None]
        extent = f"{number(min(present))} - {number(max(present))}" if present else "no samples"
        table.add_row(label, Text(sparkline(values), style=style), extent)
    return Group(title, table)  # (a table's own title would wrap to the table's width)


def _minutes(step: int) -> str:
    if step % 1440 == 0:
        return f"{step // 1440}d"
    if step % 60 == 0:
        return f"{step // 60}h"
    return f"{step}m"


def _end(point: TrendPoint) -> str:
    """The end of the last step, as its start is written (``...T10:00:00Z`` + its minutes)."""
    import datetime

    start = datetime.datetime.fromisoformat(point.start.replace("Z", "+00:00"))
    end = start + datetime.timedelta(minutes=point.minutes)
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")
