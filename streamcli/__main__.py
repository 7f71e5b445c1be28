"""``python -m streamcli`` runs the command-line interface."""

from __future__ import annotations

from streamcli.cli.main import run

run()
