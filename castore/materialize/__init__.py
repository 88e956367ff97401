"""Writing resources under a directory fd: content from the store (copy, reflink or a hardlink
object), then owner, mode, xattrs and times, in the safe order (castore.fs.attrs).

Everything here works through directory file descriptors: names are single components created
with O_EXCL/O_NOFOLLOW, so nothing is written through a symlink or outside the tree.
"""

from castore.materialize.nodes import relative_target
from castore.materialize.options import LINK_MODES, WRITE_IGNORABLE, Options, count_ads, note_ads, without_attrs
from castore.materialize.writer import Writer
from castore.store.links import LinkRef, resource_of

__all__ = [
    "LINK_MODES",
    "WRITE_IGNORABLE",
    "LinkRef",
    "Options",
    "Writer",
    "count_ads",
    "note_ads",
    "relative_target",
    "resource_of",
    "without_attrs",
]
