"""``pull --checkout DIR``: the tree a pull just recorded, materialised in the same process.

Against ``pull`` then ``checkout``, this saves a second interpreter start, a
second decode and validation of the manifest (~35 µs per entry), and the
re-hash of every blob the pull wrote: those bytes were hashed by this process a
moment before they were written (``castore.remote.packio``/``landing``), so the
checkout copies them without hashing again (``Options.trusted``). Blobs the store
held before the pull, or that a killed pull had left (re-hashed by the commit,
but read back by another code path), are verified by the checkout as usual.
"""

from __future__ import annotations

import os

from castore.remote.pull import PullResult
from castore.store import Store


def checkout_pulled(store: Store, res: PullResult, target: str, *, link: str = "auto") -> None:
    """Materialise the tree of ``res`` (a pull into ``store``) at ``target`` (absent or empty)."""
    from castore.checkout import checkout
    from castore.materialize import Options

    opts = Options(
        link=link,
        devices="create" if os.geteuid() == 0 else "skip",
        trusted=res.verified if link != "hardlink" else frozenset(),
    )
    # res.manifest was validated by the pull; None (an image): checkout reads it from the store
    checkout(store, res.manifest, target, opts, manifest_digest=res.manifest_digest, validated=True)
