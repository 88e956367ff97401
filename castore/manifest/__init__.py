"""The manifest: value types, codec, validation, diff."""

from castore.manifest.codec import dumps, dumps_json, dumps_text, loads
from castore.manifest.model import (
    AdsEntry,
    Chunk,
    Device,
    Directory,
    Manifest,
    NamedPipe,
    RegularFile,
    Resource,
    Socket,
    Symlink,
    Whiteout,
)
from castore.manifest.validate import validate

__all__ = [
    "AdsEntry",
    "Chunk",
    "Device",
    "Directory",
    "Manifest",
    "NamedPipe",
    "RegularFile",
    "Resource",
    "Socket",
    "Symlink",
    "Whiteout",
    "dumps",
    "dumps_json",
    "dumps_text",
    "loads",
    "validate",
]
