"""Text from elsewhere (the server, other users) made safe to show on a terminal.

Every command that prints something a server supplied to a person passes it
through :func:`visible`. ``--json`` output does not: JSON escaping already keeps
control characters out of it, and programs need the exact text. This module
is pure and cheap to import (the error boundary uses it).
"""

from __future__ import annotations

# What others send is shown, never obeyed: control characters (C0, DEL, C1) would let it move the
# cursor, retitle or clear the terminal (ESC) or break the one line per record (newline), and the
# bidirectional overrides and isolates would reorder what is shown. Each is shown as its escape instead.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES |= {code: f"\\u{code:04x}" for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_ESCAPES |= {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


#: The same, but newline and tab pass: for text shown as several lines on purpose (a chat message).
_ESCAPES_BUT_LINES = {code: text for code, text in _ESCAPES.items() if code not in (0x09, 0x0A)}


def visible(text: str, *, multiline: bool = False) -> str:
    """``text`` with control characters and bidirectional overrides escaped (``\\x1b``, ``\\n``, ``\\u202e``);
    ``multiline`` lets newline and tab through."""
    # isprintable() is False for every character escaped above (and for some harmless ones, which
    # translate() then leaves alone): the common case costs one scan.
    if text.isprintable():
        return text
    return text.translate(_ESCAPES_BUT_LINES if multiline else _ESCAPES)
