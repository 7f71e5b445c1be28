"""streamcli: a gRPC streaming toolkit (server and command-line clients).

The package is split in layers that depend one way only::

    cli/  ->  client/  --gRPC-->  server/  ->  services  ->  backends/

``streamcli.errors`` holds the exception tree and exit codes shared by all.
"""

from __future__ import annotations

__version__ = "0.1.0"
