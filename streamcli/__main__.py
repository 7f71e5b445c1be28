"""``python -m streamcli`` runs the command-line interface."""

from __future__ import annotations

import sys

from streamcli.cli.main import main

sys.exit(main())
