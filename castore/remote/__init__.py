"""Remote: copy continuity trees to and from OCI Distribution registries (push/pull).

``ref`` parses ``REGISTRY/REPO[:TAG|@DIGEST]``; ``oci`` maps a continuity
manifest to an OCI image manifest and back (pure); ``client`` speaks the
distribution HTTP API; ``push``/``pull`` do the transfers. The mapping is
documented in docs/remote.md.
"""

from __future__ import annotations

from castore.remote.client import Registry, RemoteError
from castore.remote.pull import PullResult, pull
from castore.remote.push import PushResult, push
from castore.remote.ref import Reference, parse_reference

__all__ = ["PullResult", "PushResult", "Reference", "Registry", "RemoteError", "parse_reference", "pull", "push"]
