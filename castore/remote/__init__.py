"""Remote: copy continuity trees to and from OCI Distribution registries (push/pull).

``ref`` parses ``REGISTRY/REPO[:TAG|@DIGEST]``; ``oci`` maps a continuity
manifest to an OCI image manifest and back (pure); ``client`` speaks the
distribution HTTP API over httpx; ``push``/``pull`` do the transfers. The
mapping is documented in docs/remote.md. Names are loaded lazily so that
importing ``castore.remote.ref`` (every CLI start) does not import httpx.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PullResult": "pull",
    "pull": "pull",
    "PushResult": "push",
    "push": "push",
    "Reference": "ref",
    "parse_reference": "ref",
    "Registry": "client",
    "RemoteError": "client",
}


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"castore.remote.{mod}"), name)


__all__ = sorted(_EXPORTS)
