"""The manifest: value types, codec, validation, diff.

The codec (protobuf) is imported on first use (PEP 562): verbs that never
read a manifest (``list``, ``--help``) do not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from castore.manifest import codec  # noqa: F401
    from castore.manifest.codec import dumps, dumps_text, loads
    from castore.manifest.render import dumps_json

_CODEC = ("dumps", "dumps_text", "loads")


def __getattr__(name: str) -> Any:
    if name in _CODEC or name == "codec":
        mod = importlib.import_module("castore.manifest.codec")  # also sets the package's ``codec``
        return mod if name == "codec" else getattr(mod, name)
    if name == "dumps_json":
        return importlib.import_module("castore.manifest.render").dumps_json
    raise AttributeError(f"module 'castore.manifest' has no attribute {name!r}")


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
