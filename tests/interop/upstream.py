"""Fixtures for interop with upstream containerd/continuity.

``upstream`` builds ``cmd/upstream-continuity`` (a small Go program over
upstream's library, which Debian ships as source in
golang-github-containerd-continuity-dev) once per session, offline, in GOPATH
mode. The binary is cached under /tmp keyed by a hash of our source, the
library source and ``go version``, so reruns cost nothing. The tests skip,
with the reason, only when Go or the library is not installed; a build
failure is a test error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL_SRC = REPO / "cmd" / "upstream-continuity"
GOCODE = Path("/usr/share/gocode")
LIBRARY = GOCODE / "src/github.com/containerd/continuity"
CACHE = Path(os.environ.get("CONTINUITY_UPSTREAM_CACHE", "/tmp/continuity-upstream-go"))


def _source_key(go: str) -> str:
    h = hashlib.sha256()
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout
    h.update(version.encode())
    for base in (TOOL_SRC, LIBRARY):
        for p in sorted(base.rglob("*.go")):
            if p.name.endswith("_test.go"):
                continue
            h.update(str(p.relative_to(base)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build_upstream_tool(out_dir: Path | None = None) -> Path:
    """Build (or reuse the cached) upstream-continuity binary; returns its path.

    Raises ``FileNotFoundError`` naming what is missing when Go or the
    library is not installed, ``RuntimeError`` with go's output if the build fails.
    """
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("the Go toolchain is not installed (apt-get install golang-go)")
    if not (LIBRARY / "manifest.go").is_file():
        raise FileNotFoundError(
            f"upstream continuity source not found at {LIBRARY} "
            "(apt-get install golang-github-containerd-continuity-dev)"
        )
    cache = out_dir or CACHE
    binary = cache / f"upstream-continuity-{_source_key(go)}"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as tmp:
        env = {
            **os.environ,
            "GO111MODULE": "off",
            # Our own (empty) GOPATH entry first, then Debian's library tree; no network.
            "GOPATH": f"{tmp}/gopath:{GOCODE}",
            "GOFLAGS": "",
            "GOPROXY": "off",
            "GOCACHE": str(cache / "gocache"),
        }
        tmp_bin = Path(tmp) / "upstream-continuity"
        p = subprocess.run(
            [go, "build", "-o", str(tmp_bin), "./cmd/upstream-continuity"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if p.returncode != 0:
            raise RuntimeError(f"go build of cmd/upstream-continuity failed:\n{p.stderr}")
        os.replace(tmp_bin, binary)  # atomic: concurrent sessions see a whole binary or none
    return binary


@dataclass(frozen=True)
class Upstream:
    """Runs upstream's answers: ``build``, ``verify``, ``dump``."""

    binary: Path

    def run(self, *args: object, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        p = subprocess.run(
            [str(self.binary), *map(os.fsdecode, args)],
            capture_output=True,  # type: ignore[arg-type]
            timeout=300,
        )
        if check:
            assert p.returncode == 0, f"upstream {args[0]} failed: {p.stderr.decode(errors='replace')}"
        return p

    def build(self, root: Path) -> bytes:
        return self.run("build", root).stdout

    def dump(self, manifest: Path) -> list[dict]:
        return json.loads(self.run("dump", manifest).stdout)["resources"]


@pytest.fixture(scope="session")
def upstream() -> Upstream:
    try:
        return Upstream(build_upstream_tool())
    except FileNotFoundError as exc:
        pytest.skip(f"upstream interop: {exc}")
