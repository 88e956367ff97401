"""``stats`` and ``du``: counts and sizes of a manifest, computed by the library (the CLI only prints them)."""

from __future__ import annotations

from castore.manifest.model import Directory, Manifest, RegularFile
from castore.units import human_size  # IEC (KiB, MiB): one style everywhere; re-exported

KINDS = ("file", "dir", "symlink", "device", "fifo", "socket", "whiteout")


def manifest_stats(m: Manifest) -> dict[str, int]:
    """Counts and sizes of ``m``: entries (paths), resources, one count per kind, hardlinks (extra
    paths of regular files), bytes (apparent), chunks, and distinct contents."""
    counts = dict.fromkeys(KINDS, 0)
    size = chunks = links = 0
    for r in m.resources:
        counts[r.kind] += 1
        if isinstance(r, RegularFile):
            size += r.size
            chunks += len(r.chunks)
            links += len(r.paths) - 1
    return {
        "entries": sum(len(r.paths) for r in m.resources),
        "resources": len(m.resources),
        "files": counts["file"],
        "directories": counts["dir"],
        "symlinks": counts["symlink"],
        "devices": counts["device"],
        "fifos": counts["fifo"],
        "sockets": counts["socket"],
        "whiteouts": counts["whiteout"],
        "hardlinks": links,
        "bytes": size,
        "chunks": chunks,
        "unique_contents": len({r.digest for r in m.files()}),
    }


def disk_usage(m: Manifest) -> dict[str, int]:
    """The disk usage of ``m``, hardlinks counted once: apparent bytes, allocated bytes (holes left
    out), bytes of distinct contents, files, entries (paths) and directories."""
    files = m.files()
    unique = {r.digest: r.size for r in files}
    return {
        "bytes": sum(r.size for r in files),
        "allocated": sum(r.size - sum(e - b for b, e in r.holes) for r in files),
        "unique_content_bytes": sum(unique.values()),
        "files": len(files),
        "entries": sum(len(r.paths) for r in m.resources),
        "directories": sum(1 for r in m.resources if isinstance(r, Directory)),
    }


__all__ = ["disk_usage", "human_size", "manifest_stats"]
