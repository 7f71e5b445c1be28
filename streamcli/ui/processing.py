"""Live processing results for people: one aligned line per result, anomalies marked."""

from __future__ import annotations

from streamcli.client.processing import LiveResult
from streamcli.terminal_text import visible

KEY_WIDTH = 12


def result_line(result: LiveResult) -> str:
    """``LINE  KEY  VALUE  avg MEAN  sd SD  z Z  n COUNT`` and its flags (``ANOMALY``, ``late``), or the error.
    (Numbers as ``.6g``, aligned: one format each, the line's cost with a result a line.)"""
    head = f"{result.line:>7}  {visible(result.key):<{KEY_WIDTH}} {result.value:>11.6g}"
    if result.error:
        return f"{head}  error: {visible(result.error)}"
    flags = ("  ANOMALY" if result.anomaly else "") + ("  late" if result.late else "")
    return (
        f"{head}  avg {result.mean:>11.6g}  sd {result.stddev:>10.6g}  z {result.z:>8.2f}"
        f"  n {result.window_count:>5}{flags}"
    )
