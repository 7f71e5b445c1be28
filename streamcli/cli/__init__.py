"""The ``streamcli`` command tree (typer), one module per command group.

``streamcli.cli.app`` assembles the tree; ``streamcli.cli.main.main`` is the
console-script entry point and the only error boundary.
"""
