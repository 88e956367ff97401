"""keygen, sign, verify-signature, dump --format pb: interop both ways with ssh-keygen -Y, and the refusals."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.sign.signing_util import (
    Cli,
    allowed,
    dump_pb,
    ingest,
    needs_ssh_keygen,
    pubkey,
    ssh_key,
    ssh_sign,
    ssh_verify,
)

pytestmark = needs_ssh_keygen


def _sigs(cli: Cli, name: str) -> list[dict[str, object]]:
    rows = json.loads(cli("list", "--json", check=True).stdout)["names"]
    return next(r["signatures"] for r in rows if r["name"] == name)


def test_dump_pb_is_the_stored_bytes(cli: Cli, tmp_path: Path, store_path: Path) -> None:
    d = ingest(cli, tmp_path, "web")
    data = dump_pb(cli, "web")
    blob = store_path / "blobs" / "sha256" / d[7:9] / d[7:]
    assert data == blob.read_bytes()
    assert dump_pb(cli, d) == data


@pytest.mark.parametrize("kind", ["ours", "ed25519", "ecdsa"])
def test_our_signature_verifies_with_ssh_keygen(cli: Cli, tmp_path: Path, kind: str) -> None:
    ingest(cli, tmp_path, "web")
    if kind == "ours":
        key = tmp_path / "k"
        out = cli("keygen", key, "-C", "rel@example.com", check=True).stdout.decode()
        assert out.startswith("SHA256:")
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    else:
        key = ssh_key(tmp_path, "k", kind, comment="rel@example.com")
    sig = tmp_path / "web.sig"
    out = cli("sign", "web", "--key", key, "-o", sig, check=True).stdout.decode()
    assert "rel@example.com" in out  # the principal: the comment of k.pub
    assert sig.read_text().startswith("-----BEGIN SSH SIGNATURE-----\n")
    signers = allowed(tmp_path, [f"rel@example.com {pubkey(key)}"])
    p = ssh_verify(signers, "rel@example.com", sig, dump_pb(cli, "web"))
    assert p.returncode == 0, p.stderr
    assert ssh_verify(signers, "rel@example.com", sig, dump_pb(cli, "web") + b"x").returncode != 0
    v = cli("verify-signature", "web", "--allowed-signers", signers, check=True)
    assert b"rel@example.com" in v.stdout
    [s] = _sigs(cli, "web")
    assert s["principal"] == "rel@example.com" and str(s["fingerprint"]).startswith("SHA256:")
    assert b"rel@example.com" in cli("history", "web", check=True).stdout


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_ssh_keygen_signature_imported_and_verified(cli: Cli, tmp_path: Path, kind: str) -> None:
    d = ingest(cli, tmp_path, "web")
    key = ssh_key(tmp_path, "alice", kind)
    sig = tmp_path / "alice.sig"
    sig.write_bytes(ssh_sign(key, dump_pb(cli, "web")))
    cli("sign", d, "--import", sig, "--principal", "alice@example.com", check=True)
    again = json.loads(cli("sign", "web", "--import", sig, "--json", check=True).stdout)
    assert again["added"] is False  # one signature is stored once
    signers = allowed(tmp_path, [f"alice@example.com {pubkey(key)}"])
    out = json.loads(cli("verify-signature", "web", "--allowed-signers", signers, "--json", check=True).stdout)
    assert out["verified"] and out["signatures"][0]["principal"] == "alice@example.com"
    # several signatures per manifest
    ours = tmp_path / "ours"
    cli("keygen", ours, check=True)
    cli("sign", "web", "--key", ours, check=True)
    assert len(_sigs(cli, "web")) == 2


def test_encrypted_key_passphrase_on_stdin(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    key = ssh_key(tmp_path, "enc", passphrase="s3cret pass")
    bad = cli("sign", "web", "--key", key, input=b"wrong\n")
    assert bad.returncode == 1 and b"wrong passphrase" in bad.stderr
    none = cli("sign", "web", "--key", key, input=b"")
    assert none.returncode != 0 and b"passphrase" in none.stderr
    assert _sigs(cli, "web") == []
    cli("sign", "web", "--key", key, input=b"s3cret pass\n", check=True)
    assert len(_sigs(cli, "web")) == 1
    ours = tmp_path / "ours"
    cli("keygen", ours, "--passphrase-stdin", input=b"pw2\n", check=True)
    cli("sign", "web", "--key", ours, input=b"pw2\n", check=True)
    assert len(_sigs(cli, "web")) == 2


def test_refusals(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    ingest(cli, tmp_path, "other", b"other content\n")
    alice, mallory = ssh_key(tmp_path, "alice"), ssh_key(tmp_path, "mallory")
    signers = allowed(tmp_path, [f"alice@example.com {pubkey(alice)}"])
    msg = dump_pb(cli, "web")

    # wrong signer: stored, but not allowed
    sig = tmp_path / "m.sig"
    sig.write_bytes(ssh_sign(mallory, msg))
    cli("sign", "web", "--import", sig, check=True)
    p = cli("verify-signature", "web", "--allowed-signers", signers)
    assert p.returncode == 4 and b"not an allowed signer" in p.stderr

    # a signature for another digest, and one over tampered bytes
    other = tmp_path / "other.sig"
    other.write_bytes(ssh_sign(alice, dump_pb(cli, "other")))
    tampered = tmp_path / "tampered.sig"
    tampered.write_bytes(ssh_sign(alice, msg[:-1] + bytes([msg[-1] ^ 1])))
    for s in (other, tampered):
        p = cli("sign", "web", "--import", s)
        assert p.returncode == 4 and b"does not match the manifest" in p.stderr, p.stderr
        assert cli("verify-signature", "web", "--allowed-signers", signers, "-s", s).returncode == 4

    # the wrong namespace (a git commit signature)
    git = tmp_path / "git.sig"
    git.write_bytes(ssh_sign(alice, msg, namespace="git"))
    p = cli("sign", "web", "--import", git)
    assert p.returncode == 4 and b"namespace 'git'" in p.stderr

    # truncated signatures: cut armor, cut base64, cut binary
    good = ssh_sign(alice, msg)
    lines = good.splitlines(keepends=True)
    for i, data in enumerate([good[: len(good) // 2], b"".join(lines[:-2] + lines[-1:]), b"junk", b""]):
        t = tmp_path / f"trunc{i}.sig"
        t.write_bytes(data)
        p = cli("sign", "web", "--import", t)
        assert p.returncode == 4 and p.stderr.startswith(b"continuity: error:"), (i, p.stderr)
        assert len(p.stderr.splitlines()) == 1
    assert cli("verify-signature", "other", "--allowed-signers", signers).returncode == 4  # unsigned

    # with only mallory's (unallowed) signature stored, alice's check still fails
    p = cli("verify-signature", "web", "--allowed-signers", signers, "--json")
    assert p.returncode == 4 and json.loads(p.stdout)["verified"] is False


def test_usage_and_bad_inputs(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    key = tmp_path / "k"
    cli("keygen", key, check=True)
    assert cli("keygen", key).returncode == 3  # never overwrites a key
    armored = cli("sign", "web", "--key", key, "-o", "-", check=True).stdout
    assert armored.startswith(b"-----BEGIN SSH SIGNATURE-----\n") and armored.endswith(b"-----END SSH SIGNATURE-----\n")
    assert max(len(ln) for ln in armored.splitlines()) == 70  # base64 wrapped at 70 columns, as ssh-keygen
    assert cli("sign", "web").returncode == 2
    assert cli("sign", "web", "--key", key, "--import", key).returncode == 2
    assert cli("sign", "web", "--key", str(key) + ".pub").returncode == 3
    assert cli("sign", "web", "--key", tmp_path / "nokey").returncode == 1
    assert cli("sign", "nosuch", "--key", key).returncode == 1
    (tmp_path / "junk").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    assert cli("sign", "web", "--key", tmp_path / "junk").returncode == 3
    bad = allowed(tmp_path, ["alice@example.com ssh-ed25519 notbase64!"], "bad_signers")
    p = cli("verify-signature", "web", "--allowed-signers", bad)
    assert p.returncode == 3 and b"bad_signers:1" in p.stderr


def test_gc_drops_signatures_with_their_manifest_and_fsck_checks_them(
    cli: Cli, tmp_path: Path, store_path: Path
) -> None:
    from castore.store import Store
    from castore.store import signatures as sigdb

    keep, drop = ingest(cli, tmp_path, "keep"), ingest(cli, tmp_path, "drop", b"to drop\n")
    key = tmp_path / "k"
    cli("keygen", key, check=True)
    for n in ("keep", "drop"):
        cli("sign", n, "--key", key, check=True)
    assert cli("fsck", check=True).returncode == 0
    cli("rm", "drop", check=True)
    cli("gc", "--grace", "0", check=True)
    s = Store.open(str(store_path))
    assert len(sigdb.for_manifest(s, keep)) == 1
    assert sigdb.for_manifest(s, drop) == []
    assert sigdb.count_by_manifest(s) == {keep: 1}
    # a stored signature that no longer verifies (a damaged row) is an fsck error, and --repair drops it
    [rec] = sigdb.for_manifest(s, keep)
    bad = bytearray(rec.raw)
    bad[-5] ^= 0xFF
    row = json.dumps(
        {
            "sig": __import__("base64").b64encode(bytes(bad)).decode(),
            "fingerprint": rec.fingerprint,
            "key_type": rec.key_type,
            "principal": None,
            "time_ns": 1,
            "source": "sign",
        }
    ).encode()
    from castore.store.meta import dkey

    s.meta.write(lambda t: t.put(dkey(keep) + b"\1" * 32, row, db=s.meta.db("signatures")))
    s.meta.close()
    p = cli("fsck")
    assert p.returncode != 0 and b"bad-signature" in p.stdout + p.stderr
    cli("fsck", "--repair")
    assert cli("fsck", check=True).returncode == 0
    assert len(sigdb.for_manifest(Store.open(str(store_path)), keep)) == 1


def test_rebuild_index_keeps_signatures(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    cli("keygen", tmp_path / "k", "-C", "me@example.com", check=True)
    cli("sign", "web", "--key", tmp_path / "k", check=True)
    cli("fsck", "--rebuild-index", check=True)
    assert [s["principal"] for s in _sigs(cli, "web")] == ["me@example.com"]
    cli("fsck", check=True)


def test_passphrase_prompted_on_a_terminal(cli: Cli, tmp_path: Path, store_path: Path) -> None:
    import fcntl
    import pty
    import subprocess
    import sys
    import termios
    import time

    ingest(cli, tmp_path, "web")
    key = ssh_key(tmp_path, "enc", passphrase="tty pass")
    master, slave = pty.openpty()

    def ctty() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "castore", "--store", str(store_path), "sign", "web", "--key", str(key)],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        preexec_fn=ctty,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 60
    while b"Passphrase" not in seen and time.monotonic() < deadline:
        try:
            seen += os.read(master, 1024)
        except OSError:
            break
    assert b"Passphrase" in seen
    os.write(master, b"tty pass\n")
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0 and out.startswith(b"sha256:")
    assert len(_sigs(cli, "web")) == 1
