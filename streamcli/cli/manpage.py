"""Help screens that read as a man page: ``--parallel N``, ``download [OPTIONS] ID``.

typer shows every value's Python type (``<bool>`` beside flags, which take no value, ``<float range>``,
``<list[str]>``) and writes required arguments as ``{ID}``. ``man_page_help`` walks the click command
tree once, when it is built (``cli/app.py``: ``command_tree``), and gives every parameter a metavar:

- a flag shows none;
- an option named in ``METAVARS`` shows that name, the same for every command that has the option
  (``--since TIME`` wherever it appears); a metavar given at the option's definition is kept;
- otherwise the value's type says: ``N`` (an integer), ``NUMBER``, ``PATH``, ``DIR``, the choices
  (``debug|info|warning|error``), or the option's name in capitals (``--room ROOM``);
- an argument shows its metavar (``ID``, ``PATH...``) or its name in capitals, ``[...]`` when it is
  optional and ``...`` when it takes several.
"""

from __future__ import annotations

import enum
import pathlib
import typing
from typing import TYPE_CHECKING, Any

from typer.core import TyperArgument

if TYPE_CHECKING:
    from typer._click.core import Command, Context

#: Metavars by option name: what the value is, where the name or type would not say it.
METAVARS = {
    "--address": "ADDRESS",
    "--since": "TIME",
    "--timestamp": "TIME",
    "--grace": "SECONDS",
    "--heartbeat": "SECONDS",
    "--live-interval": "SECONDS",
    "--stall-limit": "SECONDS",
    "--timeout": "SECONDS",
    "--idle-timeout": "SECONDS",
    "--linger": "SECONDS",
    "--chat-rate": "PER_SECOND",
    "--max-file-size": "SIZE",
    "--quota": "SIZE",
    "--upload-ttl": "DURATION",
    "--transfer-lag-target": "DURATION",
    "--interval": "DURATION",
    "--duration": "DURATION",
    "--window": "N|DURATION",
    "--event-retention": "AGE|COUNT",
    "--data": "JSON",
    "--attr": "KEY=VALUE",
    "--label": "KEY=VALUE",
    "--user-token": "NAME=TOKEN",
    "--user": "NAME",
    "--to": "NAME",
    "--key-field": "FIELD",
    "--value-field": "FIELD",
    "--time-field": "FIELD",
    "--z": "NUMBER",
    "--backend": "BACKEND",
}


class ManArgument(TyperArgument):
    """An argument shown by its metavar alone: ``ID``, ``[SERVICE]``, ``PATH...``."""

    def display_type_rich(self, ctx: Context) -> str | None:
        return None  # the metavar says what it is

    def get_usage_pieces(self, ctx: Context) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        if not self.required and not name.startswith("["):
            name = f"[{name}]"
        return [name]


def man_page_help(command: Command, parent: Context | None = None, name: str = "streamcli") -> None:
    """Give every parameter of ``command`` and the commands under it a man-page metavar (in place)."""
    from typer._click.core import Context

    ctx = Context(command, info_name=name, parent=parent, **command.context_settings)
    help_option = command.get_help_option(ctx)  # made once per command, with the names of the root's settings
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if isinstance(param, TyperArgument):
            if type(param) is TyperArgument:
                param.__class__ = ManArgument  # the same object, shown differently
            if param.metavar is None:
                param.metavar = (param.name or "").upper()
            if param.nargs != 1 and not param.metavar.endswith("..."):
                param.metavar += "..."
        elif param.param_type_name == "option":
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _option_metavar(param)
    for child_name, child in getattr(command, "commands", {}).items():
        man_page_help(child, ctx, child_name)


def _option_metavar(param: Any) -> str:
    """An option's metavar: from ``METAVARS``, else from its type, else its name in capitals."""
    long_names: list[str] = [name for name in param.opts if name.startswith("--")]
    for name in long_names:
        if name in METAVARS:
            return METAVARS[name]
    annotation = param.type_descriptor.annotation
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is not None and len(args) == 1:
        annotation = args[0]  # Optional[T] and list[T]: T
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(member.value) for member in annotation)
    if annotation is bool:
        return "BOOLEAN"
    if annotation is int:
        return "N"
    if annotation is float:
        return "NUMBER"
    if annotation is pathlib.Path:
        return "DIR" if not param.type_descriptor.parameter_info.file_okay else "PATH"
    first: str = (long_names or param.opts)[0]
    return first.lstrip("-").upper().replace("-", "_")
