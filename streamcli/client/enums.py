"""Short, lowercase names for proto enums (``login`` for ``USER_EVENT_TYPE_LOGIN``)."""

from __future__ import annotations

from typing import Any

from streamcli.errors import UsageError


class ShortNames:
    """Maps one proto enum to and from its short names, leaving out the UNSPECIFIED zero."""

    def __init__(self, enum: Any, prefix: str, what: str) -> None:
        self._enum = enum
        self._prefix = prefix
        self._what = what
        full_names: list[str] = list(enum.keys())
        self.choices = [n[len(prefix) :].lower() for n in full_names if not n.endswith("_UNSPECIFIED")]
        self._names: dict[int, str] = {int(enum.Value(n)): n[len(prefix) :].lower() for n in full_names}

    def parse(self, text: str) -> int:
        """``login``, ``LOGIN`` or ``USER_EVENT_TYPE_LOGIN`` → the enum value."""
        name = text.strip().upper()
        if not name.startswith(self._prefix):
            name = self._prefix + name
        if name[len(self._prefix) :].lower() not in self.choices:
            raise UsageError(f"unknown {self._what} {text!r}; one of: {', '.join(self.choices)}")
        return int(self._enum.Value(name))

    def name(self, value: int) -> str:
        """The short name of ``value`` (``unspecified`` for 0, the number if unknown)."""
        name = self._names.get(value)
        return str(value) if name is None else name
