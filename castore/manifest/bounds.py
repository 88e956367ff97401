"""Bound what parsing a manifest from an untrusted source may cost, before parsing it (pure, no IO).

Decoding protobuf is cheap on the wire and dear in memory: ``0A 00`` (2
bytes, an empty resource) costs ~190 bytes in upb, a minimal valid entry
~1.2 KiB once it is a ``Resource`` (measured: 10 MB of ``0A 00`` took 970 MB
in ``ParseFromString``). ``check_parse_cost`` walks the wire format once,
with the schema's descriptors, and counts entries and fields (a packed scalar
list counts one per byte) without allocating any, so a manifest that would
cost more than a tree of ``max_entries`` ordinary files is refused first.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from castore._pb import manifest_pb2 as pb
from castore.errors import CorruptManifest, IntegrityError
from castore.manifest.wire import read_varint

MAX_ENTRIES = 1 << 21  # resources: a legit entry is ~100 bytes on the wire, ~1.3 KiB parsed
MAX_FIELDS = 1 << 24  # every field occurrence, at any depth (a legit file entry has ~8)


class _Schema:
    """One message type: its submessage fields (by number) and its scalar fields (packed when repeated)."""

    __slots__ = ("subs", "scalars")

    def __init__(self, desc: Descriptor, depth: int = 0) -> None:
        self.subs: dict[int, _Schema] = {}
        self.scalars: set[int] = set()
        for f in desc.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE and depth < 8:
                self.subs[f.number] = _Schema(f.message_type, depth + 1)
            elif f.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                self.scalars.add(f.number)


_MANIFEST = _Schema(pb.Manifest.DESCRIPTOR)


def check_parse_cost(data: bytes, *, source: str, max_entries: int = MAX_ENTRIES, max_fields: int = MAX_FIELDS) -> int:
    """The number of entries in ``data``; IntegrityError when it has more than ``max_entries`` entries
    or ``max_fields`` fields, CorruptManifest when its wire format is broken."""
    fields = 0
    n = len(data)

    def varint(i: int, end: int) -> tuple[int, int]:
        try:
            return read_varint(data, i, end)
        except ValueError as exc:
            raise CorruptManifest(f"{source}: not a manifest ({exc})") from None

    entries = 0

    def walk(i: int, end: int, schema: _Schema, top: bool) -> None:
        nonlocal fields, entries
        subs, packed = schema.subs, schema.scalars
        while i < end:
            key = data[i]
            i += 1
            if key > 0x7F:
                key, i = varint(i - 1, end)
            fields += 1
            wt = key & 7
            if wt == 2:
                length = data[i] if i < end else 0x80
                if length < 0x80:
                    i += 1
                else:
                    length, i = varint(i, end)
                nxt = i + length
                if nxt > end:
                    raise CorruptManifest(f"{source}: not a manifest (truncated field at byte {i})")
                num = key >> 3
                sub = subs.get(num)
                if sub is not None:
                    if top:
                        entries += 1
                        if entries > max_entries:
                            raise IntegrityError(f"{source}: manifest has more than {max_entries} entries (limit)")
                    walk(i, nxt, sub, False)
                elif num in packed:  # a packed list: up to one element per byte
                    fields += length
                i = nxt
            elif wt == 0:
                if i < end and data[i] < 0x80:
                    i += 1
                else:
                    _, i = varint(i, end)
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            else:
                raise CorruptManifest(f"{source}: not a manifest (wire type {wt} at byte {i})")
            if i > end:
                raise CorruptManifest(f"{source}: not a manifest (truncated field)")
            if fields > max_fields:
                raise IntegrityError(f"{source}: manifest has more than {max_fields} fields (limit)")

    walk(0, n, _MANIFEST, True)
    return entries
