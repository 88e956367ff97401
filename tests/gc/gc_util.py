"""Small helpers shared by the gc, fsck and fault tests (imported by path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from castore.store import Store


def blob_files(store_path: Path) -> set[str]:
    root = store_path / "blobs" / "sha256"
    return {f"sha256:{n}" for d in os.listdir(root) for n in os.listdir(root / d)} if root.exists() else set()


def manifest_blobs(store_path: Path, digest: str) -> set[str]:
    """The blob digests a stored manifest references (and itself)."""
    from castore.store import manifest_refs

    s = Store.open(str(store_path))
    return manifest_refs(s.load_manifest(digest)) | {digest}


def fsck_json(cli, *args: str) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    p = cli("fsck", "--json", *args)
    return p.returncode, json.loads(p.stdout)


def kinds(report: dict, severity: str | None = None) -> set[str]:
    return {f["kind"] for f in report["findings"] if severity is None or f["severity"] == severity}
