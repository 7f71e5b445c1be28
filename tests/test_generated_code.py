"""The committed generated code matches the proto and the pinned generator."""

from __future__ import annotations

import filecmp
import os
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


def test_the_documented_descriptor_describes_what_the_pool_holds() -> None:
    """Reflection serves the shipped descriptor set in place of the pool's copy: the same file plus comments."""
    from google.protobuf.descriptor_pb2 import FileDescriptorProto

    from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb
    from streamcli.server.reflection import documented_files

    documented = documented_files()[pb.DESCRIPTOR.name]
    assert pb.DESCRIPTOR.name == "streaming/v1/streaming_service.proto"  # the contract's path, as other stubs name it
    assert len(documented.source_code_info.location) > 100
    generated = FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(generated)
    documented.ClearField("source_code_info")
    # protoc writes each field's json_name into a descriptor set; the pool's copy leaves it out (the default).
    messages = list(documented.message_type)
    while messages:
        message = messages.pop()
        messages.extend(message.nested_type)
        for field in message.field:
            field.ClearField("json_name")
    assert documented == generated


def test_stubs_generated_elsewhere_from_the_same_proto_load_beside_streamcli(tmp_path: pathlib.Path) -> None:
    """Another program's stubs of the contract (its own protoc run) and streamcli share one process.

    A subprocess: the descriptor pool is per process, and this one already holds streamcli's file.
    """
    # As another project would generate them: python -m grpc_tools.protoc, with proto/ as its include root.
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}"]
    subprocess.run([*protoc, f"--grpc_python_out={tmp_path}", "streaming/v1/streaming_service.proto"], check=True)
    code = (
        "from streamcli._proto.streaming.v1 import streaming_service_pb2 as ours\n"
        "from streaming.v1 import streaming_service_pb2 as theirs, streaming_service_pb2_grpc\n"
        "message = theirs.UploadFileRequest(metadata=theirs.FileMetadata(filename='a', total_size=1))\n"
        "print(ours.UploadFileRequest.FromString(message.SerializeToString()).metadata.filename)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == "a\n"
