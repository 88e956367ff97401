"""What every part of the ``Store`` facade shares: the open store's state.

``Store`` (``castore.store``) is assembled from one mixin per concern, each in
its module: ``BlobFiles`` (blobs.py), ``Catalog`` (catalog.py), ``ChunkMap``
(chunkmap.py), ``Leases`` (leases.py). They subclass ``StoreState`` for the
attributes ``Store.open`` sets.
"""

from __future__ import annotations

from castore.store.meta import MetaDB
from castore.store.revisions import RecordPolicy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from castore.readers import ChunkParams


class StoreState:
    """The attributes of an open store (set by ``Store.__init__``)."""

    path: str  # the store directory, absolute
    config: dict[str, object]
    meta: MetaDB
    if TYPE_CHECKING:

        @property
        def chunking(self) -> ChunkParams: ...  # Store.chunking: made on first use

    blob_root: str  # STORE/blobs/sha256
    root_fd: int  # the store directory, checked (Store.open); every store dir is reached from it
    _shard_fds: dict[str, int]
    readonly: bool  # castore/store/readonly.py: nothing is written (no locks, leases, caches)
    record: RecordPolicy  # how set_tag records versions (castore/store/revisions.py)
