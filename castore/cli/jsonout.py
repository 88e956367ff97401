"""One JSON contract for every verb (docs/json.md): ``"schema": 1`` and one set of key names.

The library's reports keep their own field names; here they are mapped to the
documented ones, recursively, so a key means the same thing in every verb:
``size`` is always bytes, ``digest`` a manifest or blob digest, ``ok`` whether
the verb found what it should.
"""

from __future__ import annotations

from typing import Any

SCHEMA = 1

#: library field -> documented key (docs/json.md, "Key names")
RENAME = {
    "bytes": "size",
    "sound": "ok",
    "bytes_read": "read_size",
    "uploaded_bytes": "uploaded_size",
    "downloaded_bytes": "downloaded_size",
    "unique_content_bytes": "unique_content_size",
    "allocated": "allocated_size",
}


def canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {RENAME.get(k, k) if isinstance(k, str) else k: canonical(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    return obj


def document(obj: Any) -> dict[str, Any]:
    """The top-level JSON document of a verb: an object with ``schema`` first."""
    if not isinstance(obj, dict):
        raise TypeError("a verb's JSON document is an object")
    return {"schema": SCHEMA, **canonical(obj)}
