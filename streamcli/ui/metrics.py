"""Metric series for people: a table of their aggregates, and a picture of one series' distribution."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from streamcli.client.metrics import SeriesSummary
from streamcli.terminal_text import visible

#: The quantiles ``metrics show`` asks for to draw a distribution: the middle of each percent of the samples.
PICTURE_QUANTILES = tuple((n + 0.5) / 100 for n in range(100))
BAR = 40  # characters of the longest bar
BINS = 16


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
