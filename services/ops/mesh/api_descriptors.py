"""The API's protobuf descriptors as one FileDescriptorSet, imports included: what Envoy's
gRPC-JSON transcoder reads to map HTTP requests to gRPC methods.

Built from the descriptors compiled into the generated modules (gen/), so rendering a config
needs no protoc (the production image has none) and can never disagree with the served API."""

from __future__ import annotations

from google.protobuf.descriptor import FileDescriptor
from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet


def descriptor_set(*files: FileDescriptor) -> bytes:
    """`files` and everything they import, dependencies first, serialized deterministically."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for file in files:
        visit(file)
    protos = [FileDescriptorProto.FromString(file.serialized_pb) for file in ordered]
    return FileDescriptorSet(file=protos).SerializeToString(deterministic=True)
