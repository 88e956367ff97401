"""The JSON rendering of a manifest (``dump --json``, ``ls --json``): paths that are not UTF-8 and
xattr values that are not text in base64, beside their escaped text form."""

from __future__ import annotations

import base64
import os
from typing import Any

from castore.manifest.codec import escaped
from castore.manifest.model import Device, Directory, Manifest, RegularFile, Resource, Symlink


def _xattr_json(data: bytes, raw_name: bytes | None = None) -> dict[str, str]:
    try:
        out = {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        out = {"base64": base64.b64encode(data).decode()}
    if raw_name is not None:
        out["raw_name"] = base64.b64encode(raw_name).decode()
    return out


def resource_json(r: Resource) -> dict[str, Any]:
    """A JSON-ready dict of one resource."""
    d: dict[str, Any] = {
        "paths": [escaped(p)[0] for p in r.paths],
        "type": r.kind,
        "mode": f"{r.perm:04o}",
        "uid": r.uid,
        "gid": r.gid,
    }
    if any(escaped(p)[1] is not None for p in r.paths):
        d["raw_paths"] = [base64.b64encode(os.fsencode(p)).decode() for p in r.paths]
    if r.mtime_ns is not None:
        d["mtime_ns"] = r.mtime_ns
    if r.xattrs:
        d["xattrs"] = {escaped(n)[0]: _xattr_json(v, escaped(n)[1]) for n, v in r.xattrs}
    if isinstance(r, RegularFile):
        d["size"] = r.size
        d["digest"] = r.digest
        if r.chunks:
            d["chunks"] = [{"digest": c.digest, "begin": c.begin, "end": c.end} for c in r.chunks]
        if r.holes:
            d["holes"] = [list(h) for h in r.holes]
    elif isinstance(r, Symlink):
        d["target"], raw = escaped(r.target)
        if raw is not None:
            d["raw_target"] = base64.b64encode(raw).decode()
    elif isinstance(r, Device):
        d["major"], d["minor"] = r.major, r.minor
        d["type"] = "char-device" if r.char else "block-device"
    elif isinstance(r, Directory) and r.opaque:
        d["opaque"] = True
    return d


def dumps_json(m: Manifest) -> str:
    """The JSON rendering: ``{"resources": [...]}``."""
    from castore.textsafe import json_text

    return json_text({"resources": [resource_json(r) for r in m.resources]})
