"""Server reflection that serves the contract with its comments.

grpcio-reflection describes every file from the process's descriptor pool, and the pool holds what the
generated ``_pb2`` modules embed: descriptors without ``source_code_info``, so ``grpcurl describe`` and
``buf curl`` would show none of the framing rules and units the proto documents. ``scripts/gen_proto.py``
also writes, beside each ``_pb2`` module, a FileDescriptorSet of the same file compiled with its
comments (``*.binpb``, shipped in the package). ``DocumentedReflection`` answers as grpcio-reflection
does and swaps, in every file descriptor response, the pool's copy of such a file for the documented
one. The pool itself stays as generated: the documented copy is only ever served, never registered.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import AsyncIterable, AsyncIterator, Iterable

import grpc
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from streamcli._proto.streaming.v1 import streaming_service_pb2 as pb

#: The generated modules whose documented descriptors are shipped beside them (``NAME.binpb`` for ``NAME_pb2``).
DOCUMENTED_MODULES = (pb,)


def documented_files() -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The documented FileDescriptorProto of each of ``DOCUMENTED_MODULES``, by file name."""
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for module in DOCUMENTED_MODULES:
        package, _, name = module.__name__.rpartition(".")
        resource = importlib.resources.files(package).joinpath(name.removesuffix("_pb2") + ".binpb")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(resource.read_bytes())
        for file in descriptor_set.file:
            files[file.name] = file
    return files


class DocumentedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    """grpcio-reflection's servicer, serving documented copies of the contract's files."""

    def __init__(self, service_names: Iterable[str]) -> None:
        super().__init__(service_names)
        self._documented = {name: file.SerializeToString() for name, file in documented_files().items()}

    async def ServerReflectionInfo(
        self, request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest], context: object
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        async for response in super().ServerReflectionInfo(request_iterator, context):
            if response.HasField("file_descriptor_response"):
                files = response.file_descriptor_response.file_descriptor_proto
                files[:] = [self._documented.get(_file_name(file), file) for file in files]
            yield response


def _file_name(serialized: bytes) -> str:
    return str(descriptor_pb2.FileDescriptorProto.FromString(serialized).name)


def enable_documented_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Add reflection (``grpc.reflection.v1alpha.ServerReflection``) for ``service_names`` to ``server``."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(DocumentedReflection(service_names), server)
