"""Just enough of the protobuf wire format to assemble responses from stored bytes.

A response carrying stored records is their serialized bytes framed as a
repeated field: no parse and no re-serialize per record. For the events log
that is about twice as fast as building messages (bench/README.md). The bytes
parse to the same message as ``SerializeToString`` of the built message would
(tests/test_wire.py holds them together), though not byte for byte: a record's
id is appended after its other fields, where the library writes fields in
number order; protobuf parsers accept fields in any order. The encoding itself
is ``streamcli/protowire.py`` (the client writes records with it too).
"""

from __future__ import annotations

from streamcli.protowire import bytes_field, repeated_messages, serialize, varint, varint_field

__all__ = ["bytes_field", "repeated_messages", "serialize", "varint", "varint_field"]
