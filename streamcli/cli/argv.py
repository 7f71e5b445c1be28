"""Global options anywhere on the command line, as kubectl and gh take them.

The global options (``--json``, ``--address``...) are defined once, on the root of the command
tree, and click only takes them before the command. ``global_options_first`` rewrites the command
line once, before click parses it: a global option found after the command name moves to the front,
with its value. It walks the command tree as click would, so it knows which words are values:

- an option of the command being read (``serve --address``, ``notify send --title --json``) stays
  where it is, with its value, even when a global option has the same name;
- ``--opt=value`` and ``-aVALUE`` move as one word, ``--opt value`` as two;
- everything after ``--`` is left alone, as are words of a command that does not exist (click then
  reports the unknown command).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typer._click.core import Command, Parameter


class _Options:
    """The option names of one command: which take a value."""

    def __init__(self, params: Sequence[Parameter], help_names: Sequence[str]) -> None:
        self.valued: set[str] = set()
        self.flags: set[str] = set(help_names)
        for param in params:
            if param.param_type_name != "option":
                continue
            names = [*param.opts, *param.secondary_opts]
            takes_value = not (getattr(param, "is_flag", False) or getattr(param, "count", False))
            (self.valued if takes_value else self.flags).update(names)

    def match(self, word: str) -> tuple[str, bool] | None:
        """``(name, value_follows)`` when ``word`` is one of these options, else None.

        ``value_follows`` is true when the option takes a value and ``word`` does not carry it.
        """
        if word.startswith("--"):
            name, equals, _ = word.partition("=")
            if name in self.valued:
                return name, not equals
            return (name, False) if name in self.flags and not equals else None
        if word.startswith("-") and len(word) >= 2:
            name = word[:2]
            if name in self.valued:
                return name, len(word) == 2
            return (name, False) if name in self.flags and len(word) == 2 else None
        return None


def global_options_first(root: Command, argv: Sequence[str]) -> list[str]:
    """``argv`` with the root's options that follow the command name moved before it, in order."""
    help_names = root.context_settings.get("help_option_names", ["--help"])
    globals_ = _Options(root.params, help_names)
    moved: list[str] = []
    rest: list[str] = []
    words = list(argv)
    index = 0
    # Before the command: the root's own options, as click reads them.
    while index < len(words) and words[index].startswith("-") and words[index] != "--":
        found = globals_.match(words[index])
        if found is None:
            return words  # an unknown option: click says so
        moved.append(words[index])
        if found[1] and index + 1 < len(words):
            moved.append(words[index + 1])
            index += 1
        index += 1
    command: Command | None = root
    while index < len(words):
        word = words[index]
        if word == "--":
            rest.extend(words[index:])
            break
        own = _Options(command.params, help_names) if command is not None else None
        found = own.match(word) if own is not None else None
        if found is not None:
            rest.append(word)
            if found[1] and index + 1 < len(words):
                rest.append(words[index + 1])
                index += 1
        elif command is not None and (found := globals_.match(word)) is not None:
            moved.append(word)
            if found[1] and index + 1 < len(words):
                moved.append(words[index + 1])
                index += 1
        else:
            rest.append(word)
            if not word.startswith("-") or word == "-":
                command = _subcommand(command, word)
        index += 1
    return [*moved, *rest]


def _subcommand(command: Command | None, word: str) -> Command | None:
    """The command ``word`` names under ``command`` (the same command for a positional argument).

    None when ``command`` is a group without such a command: from there on nothing is moved.
    """
    commands = getattr(command, "commands", None)
    if command is None or commands is None:
        return command  # a leaf command: ``word`` is one of its arguments
    found: Command | None = commands.get(word)
    return found
