"""The layers of README's "Where to find what", read from the imports of every module.

cli → client/ui → (gRPC) → server → services → backends. The views (cli/, ui/) see typed records only:
never the generated code nor grpc; the client never imports the server's side; the server's side never
imports a terminal library. A new module that breaks a rule fails here, naming the import.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import streamcli

PACKAGE = pathlib.Path(streamcli.__file__).parent

#: Package (a folder of streamcli/) -> module prefixes its modules must not import.
FORBIDDEN = {
    # (cli/serve.py configures and runs the server: the one command that reaches below the client)
    "cli": ("streamcli._proto", "grpc", "grpc_health", "grpc_reflection"),
    "ui": ("streamcli._proto", "grpc", "streamcli.cli", "streamcli.server", "streamcli.services"),
    "client": ("streamcli.cli", "streamcli.ui", "streamcli.server", "streamcli.services", "typer", "rich"),
    "server": ("streamcli.cli", "streamcli.ui", "streamcli.client", "typer", "rich", "prompt_toolkit"),
    "services": ("streamcli.cli", "streamcli.ui", "streamcli.client", "typer", "rich", "prompt_toolkit"),
    "backends": ("streamcli.cli", "streamcli.ui", "streamcli.client", "streamcli.server", "streamcli.services"),
}


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``, including those inside functions and TYPE_CHECKING."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def breaks(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_or_beside_it(package: str) -> None:
    files = sorted((PACKAGE / package).rglob("*.py"))
    assert files, f"streamcli/{package} has no modules"
    offending = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {module}"
        for path in files
        for line, module in imported_modules(path)
        if breaks(module, FORBIDDEN[package])
    ]
    assert offending == []


def test_the_check_sees_imports_inside_functions_and_type_checking_blocks(tmp_path: pathlib.Path) -> None:
    probe = tmp_path / "probe.py"
    lines = ["from typing import TYPE_CHECKING", "if TYPE_CHECKING:", "    import grpc", "def f():"]
    probe.write_text("\n".join([*lines, "    from streamcli._proto import x", ""]))
    modules = [module for _, module in imported_modules(probe)]
    assert breaks(modules[1], FORBIDDEN["cli"]) and breaks(modules[2], FORBIDDEN["cli"])
    assert not breaks("grpcio_tools_like", ("grpc",))
