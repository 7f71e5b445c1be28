"""The command tree as one invocation needs it: built as far as it is used, and cheap to run.

A command runs in a fresh interpreter, so what its start-up builds and imports is paid on every run
(``bench/startup.py``). Two things here keep that to what the command uses:

- ``LazyCommands``: the root group's commands, built when click asks for one by name. ``streamcli
  files ls`` builds the ``files`` group only, not the other command groups (typer reads every
  parameter of every command function when it builds one). Help, completion and "Did you mean"
  still see every name, in the order of the whole tree.
- ``PlainValues``: typer coerces every parameter value through a pydantic ``TypeAdapter``, which costs
  importing pydantic (about as much as importing typer) even when no value needs converting. A value
  that is already of its parameter's type (a default, a string for a ``str`` parameter, ``None``)
  comes out of typer's coercion unchanged, so it is passed through as is; any other value (``--limit
  5``: a string for an ``int``) goes through typer's own coercion, with its checks and messages.
  A string for a plain ``pathlib.Path`` parameter (no ``exists``, ``resolve_path``, ``writable``...)
  becomes the ``Path`` typer's coercion would make, without a ``TypeAdapter`` built per value (about
  2 ms each: ``upload`` of 1,000 files spent seconds there); a path typer would refuse (not readable)
  goes through typer's coercion, for its message; so does a decimal string for an ``int`` parameter
  (``--parallel 4``), made an int when it is in range.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typer._click.core import Command, Context, Parameter


class LazyCommands(MutableMapping[str, "Command"]):
    """A group's subcommands by name, in a fixed order, each built on first use.

    Args:
        names: every subcommand's name, in the order help lists them.
        build: builds the commands that come with ``name`` (a module may register several) by name.
    """

    def __init__(self, names: Sequence[str], build: Callable[[str], dict[str, Command]]) -> None:
        self._names = list(names)
        self._build = build
        self._built: dict[str, Command] = {}

    def __getitem__(self, name: str) -> Command:
        if name not in self._built and name in self._names:
            for built_name, command in self._build(name).items():
                self._built.setdefault(built_name, plain_values(command))
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command
        if name not in self._names:
            self._names.append(name)

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def plain_values(command: Command) -> Command:
    """Give every parameter of ``command`` (and of its subcommands) ``PlainValues``; return ``command``."""
    for param in command.params:
        _plain(param)
    # The --help option is made when a context first asks for it (its names come from the context).
    help_option = command.get_help_option

    def get_help_option(ctx: Context) -> Parameter | None:
        option = help_option(ctx)
        if option is not None:
            _plain(option)
        return option

    setattr(command, "get_help_option", get_help_option)  # noqa: B010 (on this instance only)
    subcommands = getattr(command, "commands", None)
    if isinstance(subcommands, dict):  # not a LazyCommands: those do it as they build
        for subcommand in subcommands.values():
            plain_values(subcommand)
    return command


def _plain(param: Parameter) -> None:
    # Typer's parameters keep their coercion here (built on first use); others have none to replace.
    if getattr(param, "_runtime_param", False) is None and hasattr(param, "type_descriptor"):
        param._runtime_param = PlainValues(param)  # type: ignore[attr-defined]


class PlainValues:
    """Typer's coercion of one parameter, without pydantic for values it would return unchanged."""

    def __init__(self, param: Parameter) -> None:
        descriptor: Any = getattr(param, "type_descriptor")  # noqa: B009 (typer's, untyped here)
        info = descriptor.parameter_info
        self._annotation: Any = descriptor.annotation
        self._multiple = param.multiple or param.nargs == -1
        # Only plain types without typer-side conversion: no parser, no file, no clamping to a range.
        self._plain = descriptor.file_annotation is None and info.parser is None and not info.clamp
        self._min: float | None = info.min
        self._max: float | None = info.max
        # What typer checks of a path beyond "readable" (the default): with none of it, a path is Path(value).
        self._plain_path = getattr(info, "path_type", None) is None and not (
            getattr(info, "exists", False)
            or getattr(info, "resolve_path", False)
            or getattr(info, "writable", False)
            or not getattr(info, "file_okay", True)
            or not getattr(info, "dir_okay", True)
        )
        self._readable = bool(getattr(info, "readable", True))
        self._typer: Any = None

    def coerce(self, value: Any, param: Parameter, ctx: Context) -> Any:
        """What typer's ``RuntimeParam.coerce`` returns for ``value``."""
        if value is None:
            return () if self._multiple else None
        if self._plain:
            if self._multiple:
                element = _list_element(self._annotation)
                if isinstance(value, (tuple, list)) and element is not None:
                    if all(self._same(v, element) for v in value):
                        return list(value)
                    paths = [self._path(v, element) for v in value]
                    if all(path is not None for path in paths):
                        return paths
            elif self._same(value, self._annotation):
                return value
            elif (path := self._path(value, self._annotation)) is not None:
                return path
            elif (number := self._int(value)) is not None:
                return number
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(getattr(param, "type_descriptor"))  # noqa: B009
        return self._typer.coerce(value, param=param, ctx=ctx)

    def _path(self, value: Any, annotation: Any) -> pathlib.Path | None:
        """The ``Path`` typer's coercion makes of the string ``value`` for a plain ``Path`` parameter (no checks
        but "readable"); None for anything else, and for a path typer would refuse."""
        if annotation is not pathlib.Path or type(value) is not str or not self._plain_path:
            return None
        path = pathlib.Path(value)  # (what pydantic's Path validation makes of a string)
        if self._readable and os.path.exists(path) and not os.access(path, os.R_OK):
            return None  # typer refuses it: its coercion says so
        return path

    def _int(self, value: Any) -> int | None:
        """The int typer's coercion makes of a string of decimal digits for an ``int`` parameter when it is in
        range; None for anything else (``--parallel 4`` costs no pydantic, ``--parallel x`` gets typer's message)."""
        if self._annotation is not int or type(value) is not str or not _DECIMAL.fullmatch(value):
            return None
        number = int(value)
        return number if self._same(number, int) else None

    def _same(self, value: Any, annotation: Any) -> bool:
        if annotation not in (str, int, float, bool) or type(value) is not annotation:
            return False
        if annotation in (int, float):
            return (self._min is None or value >= self._min) and (self._max is None or value <= self._max)
        return True


#: An integer as typer takes it from the command line, in the one form it has no other reading of.
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)")


def _list_element(annotation: Any) -> Any:
    """``str`` for ``list[str]``; None for anything else."""
    if getattr(annotation, "__origin__", None) is list and len(annotation.__args__) == 1:
        return annotation.__args__[0]
    return None
