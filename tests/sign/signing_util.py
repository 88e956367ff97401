"""Helpers for the signing tests: trees, keys made by ssh-keygen, allowed_signers files, policies."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

needs_ssh_keygen = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None, reason="ssh-keygen (Debian openssh-client) is not installed"
)
Cli = Callable[..., CompletedProcess[bytes]]


def ingest(cli: Cli, tmp: Path, name: str, content: bytes = b"hello\n") -> str:
    src = tmp / f"src-{name}-{len(content)}"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(content)
    (src / "top").write_bytes(b"x" * 100)
    return cli("ingest", src, "--name", name, check=True).stdout.decode().strip()


def ssh_key(tmp: Path, name: str, kind: str = "ed25519", passphrase: str = "", comment: str = "") -> Path:
    key = tmp / name
    args = ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment or f"{name}@example.com", "-f", str(key)]
    if kind == "ecdsa":
        args[4:4] = ["-b", "256"]
    subprocess.run(args, check=True, capture_output=True)
    return key


def pubkey(key: Path) -> str:
    """``KEYTYPE BASE64`` of a key's .pub file."""
    return " ".join(Path(str(key) + ".pub").read_text().split()[:2])


def allowed(tmp: Path, lines: list[str], name: str = "allowed_signers") -> Path:
    p = tmp / name
    p.write_text("\n".join(lines) + "\n")
    return p


def policy(tmp: Path, doc: dict[str, object], name: str = "policy.json") -> Path:
    p = tmp / name
    p.write_text(json.dumps(doc))
    return p


def dump_pb(cli: Cli, ref: str) -> bytes:
    return cli("dump", ref, "--format", "pb", check=True).stdout


def ssh_sign(key: Path, message: bytes, namespace: str = "continuity") -> bytes:
    """``ssh-keygen -Y sign`` of ``message`` (stdin): the armored signature."""
    p = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", namespace], input=message, capture_output=True, check=True
    )
    return p.stdout


def ssh_verify(signers: Path, principal: str, sig: Path, message: bytes) -> CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", principal, "-n", "continuity", "-s", str(sig)],
        input=message,
        capture_output=True,
    )
