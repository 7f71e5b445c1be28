"""Regenerate the committed protobuf/gRPC code from proto/.

Usage (from the project root, with the test extra installed):

    python scripts/gen_proto.py            # writes into streamcli/_proto
    python scripts/gen_proto.py --out DIR  # writes into DIR/streamcli/_proto

protoc reads ``proto/`` as its include root, so every file is registered in the
descriptor pool under its contract path (``streaming/v1/streaming_service.proto``),
the name reflection serves and the name any other program's stubs generated from
the same proto register: the two can live in one process. The generated modules
would then import each other as ``streaming.v1...``; this script rewrites those
imports (and the module names given to protobuf) into the ``streamcli._proto``
package, so they import by full package path with no sys.path tricks.

Beside each ``*_pb2.py`` it writes ``*.binpb``: a FileDescriptorSet of that file
with its comments (``source_code_info``, which the ``_pb2`` module's embedded
descriptor lacks), for server reflection to serve (``streamcli/server/reflection.py``).
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "streamcli._proto"


def generate(out_root: pathlib.Path) -> None:
    """Run protoc (from the pinned grpcio-tools) into ``out_root``/streamcli/_proto."""
    protos = sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))
    package_dir = out_root / PACKAGE.replace(".", "/")
    package_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        raw = pathlib.Path(scratch)
        _protoc(raw, protos)
        top_packages = {pathlib.Path(proto).parts[0] for proto in protos}
        for generated in sorted(p for p in raw.rglob("*") if p.is_file()):
            target = package_dir / generated.relative_to(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            if generated.suffix in (".py", ".pyi"):
                target.write_text(_into_package(generated.read_text(), top_packages))
            else:
                target.write_bytes(generated.read_bytes())
    # Every directory on the way down is a regular package.
    for proto in protos:
        directory = package_dir / pathlib.Path(proto).parent
        while directory != out_root / "streamcli":
            (directory / "__init__.py").touch()
            directory = directory.parent


def _protoc(out: pathlib.Path, protos: list[str]) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins live next to this interpreter (venv bin/).
    bindir = pathlib.Path(sys.executable).parent
    base = ["protoc", f"-I{PROTO_DIR}", f"-I{well_known}"]
    args = [
        *base,
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in protos:
        # One set per file, without its imports: the well-known types are served from the pool as they are.
        descriptor_set = out / proto.removesuffix(".proto")
        descriptor_set = descriptor_set.with_name(descriptor_set.name + ".binpb")
        if protoc.main([*base, "--include_source_info", f"--descriptor_set_out={descriptor_set}", proto]) != 0:
            raise SystemExit(f"protoc failed to write the descriptor set of {proto}")


def _into_package(source: str, top_packages: set[str]) -> str:
    """Rewrite ``from streaming.v1 import x`` / ``'streaming.v1.x_pb2'`` into the streamcli._proto package."""
    names = "|".join(re.escape(name) for name in sorted(top_packages))
    source = re.sub(rf"^(from|import) ({names})\.", rf"\1 {PACKAGE}.\2.", source, flags=re.MULTILINE)
    # The module name protobuf gives the message classes (their __module__).
    return re.sub(rf"(BuildTopDescriptorsAndMessages\(DESCRIPTOR, ')({names})\.", rf"\1{PACKAGE}.\2.", source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT, help="output root")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
