"""Live processing results for people: one aligned line per result, anomalies marked."""

from __future__ import annotations

from streamcli.client.processing import LiveResult
from streamcli.terminal_text import visible

KEY_WIDTH = 12


def _number(value: float) -> str:
    return f"{value:.6g}"


def result_line(result: LiveResult) -> str:
    """``LINE  KEY  VALUE  avg MEAN  sd SD  z Z  n COUNT`` and its flags (``ANOMALY``, ``late``), or the error."""
    head = f"{result.line:>7}  {visible(result.key):<{KEY_WIDTH}} {_number(result.value):>11}"
    if result.error:
        return f"{head}  error: {visible(result.error)}"
    flags = ("  ANOMALY" if result.anomaly else "") + ("  late" if result.late else "")
    return (
        f"{head}  avg {_number(result.mean):>11}  sd {_number(result.stddev):>10}  z {result.z:>8.2f}"
        f"  n {result.window_count:>5}{flags}"
    )
