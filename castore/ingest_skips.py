"""Entries an ingest could not read: reported, left out, the snapshot marked incomplete.

restic and borg warn and go on when a file cannot be read (permission denied,
vanished while the walk ran); so does ``ingest DIR``: one warning line per
entry on stderr, with the path the user gave (SRC joined with the entry's
path), the entry left out of the manifest, and the version recorded with the
incomplete flag (castore/store/revisions.py FLAG_INCOMPLETE), which list,
history and log show. The CLI then exits 3 (after printing the digest).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from castore.readers import FileJob, FileResult
from castore.textsafe import safe_line


class SkipLog:
    """The ``on_skip`` handler of an ingest of ``src``: warns once per entry, remembers them."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.paths: dict[str, str] = {}

    def __call__(self, rel: str, why: str) -> None:
        if rel in self.paths:
            return
        self.paths[rel] = why
        real = os.path.join(self.src, rel)
        print(f"continuity: warning: {safe_line(real)}: {safe_line(why)}; skipped", file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return len(self.paths)


class SkipCount:
    """An ``on_skip`` handler that counts the entries left out and passes each on to ``handler``."""

    def __init__(self, handler: Callable[[str, str], None] | None) -> None:
        self.handler = handler
        self.paths: set[str] = set()

    @property
    def count(self) -> int:
        return len(self.paths)

    def __call__(self, rel: str, why: str) -> None:
        self.paths.add(rel)
        if self.handler is not None:
            self.handler(rel, why)


def drop_unread(
    walked: Any, jobs: list[FileJob], results: list[FileResult], hit_idx: set[int]
) -> tuple[list[FileJob], list[FileResult], set[int]]:
    """Leave the files whose read failed (``error`` set) out of the walk (a castore.build.WalkResult),
    the jobs and the results.

    ``walked.files`` and ``jobs`` are the same list in ingest; ``hit_idx`` holds
    indexes into it (stat-cache hits), renumbered here.
    """
    bad = {i for i, r in enumerate(results) if r.error}
    if not bad:
        return jobs, results, hit_idx
    gone = {jobs[i].rel for i in bad}
    keep = [i for i in range(len(jobs)) if i not in bad]
    new_index = {old: new for new, old in enumerate(keep)}
    kept_jobs = [jobs[i] for i in keep]
    walked.files[:] = kept_jobs
    walked.entries[:] = [e for e in walked.entries if e.path not in gone]
    return kept_jobs, [results[i] for i in keep], {new_index[i] for i in hit_idx if i in new_index}
