"""Regenerate the committed protobuf/gRPC code from proto/.

Usage (from the project root, with the test extra installed):

    python scripts/gen_proto.py            # writes into streamcli/_proto
    python scripts/gen_proto.py --out DIR  # writes into DIR/streamcli/_proto

The include path maps ``proto/`` onto ``streamcli/_proto`` so the wire package
stays ``streaming.v1`` while the generated modules import each other by full
package path (``streamcli._proto.streaming.v1``), with no sys.path tricks.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_PREFIX = "streamcli/_proto"


def generate(out_root: pathlib.Path) -> None:
    """Run protoc (from the pinned grpcio-tools) into ``out_root``."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins live next to this interpreter (venv bin/).
    bindir = pathlib.Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PACKAGE_PREFIX}={PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
    ] + [f"{PACKAGE_PREFIX}/{p}" for p in protos]
    out_root.mkdir(parents=True, exist_ok=True)
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Every directory on the way down is a regular package.
    for proto in protos:
        directory = out_root / PACKAGE_PREFIX / pathlib.Path(proto).parent
        while directory != out_root / "streamcli":
            (directory / "__init__.py").touch()
            directory = directory.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT, help="output root")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
