"""Checks of the text fields clients send, shared by the services."""

from __future__ import annotations

import re

# Control characters (Unicode category Cc: C0, DEL and C1). In a name they are never meant; shown by
# a client that does not escape them they act on its terminal (ESC) or break its lines (newline).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # newline and tab allowed


def has_control(text: str, *, multiline: bool = False) -> bool:
    """Whether ``text`` holds a control character; ``multiline`` allows newline and tab."""
    return (_CONTROL_BUT_LINES if multiline else _CONTROL).search(text) is not None
