"""The committed generated code matches the proto and the pinned generator."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
GENERATED = ROOT / "streamcli" / "_proto"


def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "streamcli" / "_proto"
    fresh_files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(GENERATED) for p in GENERATED.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    assert fresh_files == committed, "files differ: run python scripts/gen_proto.py"
    stale = [str(p) for p in fresh_files if not filecmp.cmp(fresh / p, GENERATED / p, shallow=False)]
    assert stale == [], f"stale generated code {stale}: run python scripts/gen_proto.py"


def test_generated_code_imports_by_package_path() -> None:
    code = "from streamcli._proto.streaming.v1 import streaming_service_pb2_grpc as g; print(g.StreamingServiceStub)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr
