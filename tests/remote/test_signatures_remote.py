"""Signatures through a real registry (distribution 2.8: no referrers API, so the sha256-<hex>.sig tag):
push sends them, pull fetches and stores them, and the trust policy decides before anything is written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from castore.digest import hash_bytes
from castore.remote.oci import OCI_INDEX, OCI_MANIFEST
from castore.remote.signatures import SIGNATURE_ARTIFACT_TYPE, build_artifact, sig_tag
from castore.sign.sshsig import armor
from castore.store import Store
from castore.store import signatures as sigdb
from tests.helpers import run_cli
from tests.remote.registry import FakeRegistry, artifact
from tests.sign.signing_util import allowed, needs_ssh_keygen, policy, pubkey, ssh_key, ssh_sign


def _tree(tmp_path: Path, store: Path, name: str = "web", content: bytes = b"signed content\n") -> str:
    src = tmp_path / f"src-{name}"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(content)
    return run_cli("ingest", src, "--name", name, store=store, check=True).stdout.decode().strip()


def _nothing_recorded(store: Path) -> None:
    if not (store / "config").exists():
        return
    s = Store.open(str(store))
    assert s.tags() == [] and s.manifests() == []


def test_push_pull_signatures_and_policy(tmp_path: Path, repo: str) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    d = _tree(tmp_path, a)
    key = tmp_path / "rel"
    run_cli("keygen", key, "-C", "release@example.com", store=a, check=True)
    run_cli("sign", "web", "--key", key, store=a, check=True)
    pushed = json.loads(run_cli("push", "web", f"{repo}:v1", "--json", store=a, check=True).stdout)
    assert pushed["signatures"] == 1

    # the artifact: subject = the tree's OCI manifest, under the tag schema
    registry, name = repo.split("/", 1)
    art = httpx.get(
        f"http://{registry}/v2/{name}/manifests/{sig_tag(pushed['oci_digest'])}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).json()
    assert art["artifactType"] == SIGNATURE_ARTIFACT_TYPE and art["subject"]["digest"] == pushed["oci_digest"]
    assert art["layers"][0]["annotations"]["dev.continuity.signature.principal"] == "release@example.com"

    signers = allowed(tmp_path, [f"release@example.com {pubkey(key)}"])
    pol = policy(
        tmp_path,
        {
            "default": {"type": "reject"},
            "scopes": {
                f"{repo}": {"type": "signedBy", "allowedSigners": str(signers), "principals": ["release@example.com"]}
            },
        },
    )
    got = json.loads(run_cli("--policy", pol, "pull", f"{repo}:v1", "--json", store=b, check=True).stdout)
    assert got["digest"] == d and got["signatures"] == 1
    run_cli("verify-signature", d, "--allowed-signers", signers, store=b, check=True)
    rows = json.loads(run_cli("list", "--json", store=b, check=True).stdout)["names"]
    assert rows[0]["signatures"][0]["principal"] == "release@example.com"
    assert rows[0]["signatures"][0]["source"] == "pull"
    # checkout of the pulled name under the same policy: the stored signature satisfies it
    run_cli("--policy", pol, "checkout", f"{repo}:v1", tmp_path / "out", store=b, check=True)

    # a key the scope does not allow: exit 4, nothing written
    run_cli("keygen", tmp_path / "other", store=c, check=True)
    wrong = policy(
        tmp_path,
        {
            "default": {
                "type": "signedBy",
                "allowedSigners": str(
                    allowed(tmp_path, [f"release@example.com {pubkey(tmp_path / 'other')}"], "wrong_signers")
                ),
            }
        },
        "wrong.json",
    )
    p = run_cli("--policy", wrong, "pull", f"{repo}:v1", store=c)
    assert p.returncode == 4 and b"no valid signature" in p.stderr
    _nothing_recorded(c)
    # a registry scope that rejects
    rej = policy(tmp_path, {"default": {"type": "accept"}, "scopes": {registry + "/": {"type": "reject"}}}, "r.json")
    p = run_cli("--policy", rej, "pull", f"{repo}:v1", store=c)
    assert p.returncode == 4 and b"rejects it" in p.stderr
    _nothing_recorded(c)


def test_unsigned_pull_refused_by_signed_by(tmp_path: Path, repo: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(tmp_path, a)
    run_cli("push", "web", f"{repo}:v1", store=a, check=True)
    run_cli("keygen", tmp_path / "k", store=a, check=True)
    pol = policy(
        tmp_path,
        {"default": {"type": "signedBy", "allowedSigners": str(allowed(tmp_path, [f"x@y {pubkey(tmp_path / 'k')}"]))}},
    )
    p = run_cli("--policy", pol, "pull", f"{repo}:v1", store=b)
    assert p.returncode == 4 and b"has no signature" in p.stderr
    _nothing_recorded(b)
    assert not list((b / "blobs").rglob("*")) or all(x.is_dir() for x in (b / "blobs").rglob("*"))
    got = json.loads(run_cli("pull", f"{repo}:v1", "--json", store=b, check=True).stdout)  # no policy: accepted
    assert got["signatures"] == 0


@needs_ssh_keygen
def test_signatures_merge_and_ssh_keygen_verifies_a_pulled_one(tmp_path: Path, repo: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    d = _tree(tmp_path, a)
    run_cli("keygen", tmp_path / "k1", store=a, check=True)
    run_cli("sign", "web", "--key", tmp_path / "k1", store=a, check=True)
    run_cli("push", "web", f"{repo}:v1", store=a, check=True)
    # a second signer, in another store: its push adds to the artifact, keeping the first
    c = tmp_path / "c"
    run_cli("pull", f"{repo}:v1", store=c, check=True)
    alice = ssh_key(tmp_path, "alice")
    msg = run_cli("dump", d, "--format", "pb", store=c, check=True).stdout
    (tmp_path / "alice.sig").write_bytes(ssh_sign(alice, msg))
    run_cli("sign", d, "--import", tmp_path / "alice.sig", "--principal", "alice@example.com", store=c, check=True)
    run_cli("push", d, f"{repo}:v1", store=c, check=True)
    got = json.loads(run_cli("pull", f"{repo}:v1", "--json", store=b, check=True).stdout)
    assert got["signatures"] == 2
    # the pulled manifest's bytes check with ssh-keygen alone
    signers = allowed(tmp_path, [f"alice@example.com {pubkey(alice)}"])
    sig = tmp_path / "again.sig"
    sig.write_bytes((tmp_path / "alice.sig").read_bytes())
    pulled = run_cli("dump", d, "--format", "pb", store=b, check=True).stdout
    v = subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(signers),
            "-I",
            "alice@example.com",
            "-n",
            "continuity",
            "-s",
            str(sig),
        ],
        input=pulled,
        capture_output=True,
    )
    assert v.returncode == 0, v.stderr


def _signed_fake(
    tmp_path: Path, fake: FakeRegistry, sig_bytes: bytes | None = None, lie: bool = False
) -> tuple[str, Path, str]:
    """A fake registry serving a signed tree through the referrers API; (manifest digest, signers, oci digest)."""
    a = tmp_path / "a"
    d = _tree(tmp_path, a)
    key = tmp_path / "k"
    run_cli("keygen", key, "-C", "rel@example.com", store=a, check=True)
    run_cli("sign", "web", "--key", key, store=a, check=True)
    s = Store.open(str(a))
    [rec] = sigdb.for_manifest(s, d)
    oci, blobs = artifact(s, d)
    fake.serve_artifact("t", "v1", oci, blobs)
    armored = armor(rec.raw).encode() if sig_bytes is None else sig_bytes
    sd = hash_bytes(armor(rec.raw).encode() if lie else armored)  # the digest the artifact names (a lie: not these)
    art = build_artifact(hash_bytes(oci), len(oci), d, [(sd, len(armored), "rel@example.com", rec.fingerprint)])
    fake.routes[("GET", f"/v2/t/manifests/{hash_bytes(art)}")] = (200, {"Content-Type": OCI_MANIFEST}, art)
    fake.routes[("GET", f"/v2/t/blobs/{sd}")] = (200, {}, armored)
    bogus = "sha256:" + "ab" * 32  # listed, but its bytes will not hash to it: ignored
    fake.routes[("GET", f"/v2/t/manifests/{bogus}")] = (200, {"Content-Type": OCI_MANIFEST}, art + b" ")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_ARTIFACT_TYPE, "digest": dd, "size": len(art)}
                for dd in (bogus, hash_bytes(art))
            ],
        }
    ).encode()
    fake.routes[("GET", f"/v2/t/referrers/{hash_bytes(oci)}")] = (200, {"Content-Type": OCI_INDEX}, index)
    return d, allowed(tmp_path, [f"rel@example.com {pubkey(key)}"]), hash_bytes(oci)


def test_referrers_api(tmp_path: Path, fake: FakeRegistry) -> None:
    d, signers, oci_digest = _signed_fake(tmp_path, fake)
    pol = policy(tmp_path, {"default": {"type": "signedBy", "allowedSigners": str(signers)}})
    got = json.loads(
        run_cli("--policy", pol, "pull", f"{fake.host}/t:v1", "--json", store=tmp_path / "b", check=True).stdout
    )
    assert got["digest"] == d and got["signatures"] == 1
    asked = [p for _, p, _ in fake.requests]
    assert any("/referrers/" in p and "artifactType=" in p for p in asked)
    assert not any(p.endswith(".sig") for p in asked)  # the referrers API answered: no tag fallback


def test_hostile_signature_blobs(tmp_path: Path, fake: FakeRegistry) -> None:
    """A signature blob with wrong bytes, or a signature of another manifest: never stored, never trusted."""
    other = tmp_path / "o"
    _tree(tmp_path, other, "other", b"something else\n")
    run_cli("keygen", tmp_path / "ok", store=other, check=True)
    run_cli("sign", "other", "--key", tmp_path / "ok", store=other, check=True)
    so = Store.open(str(other))
    foreign = armor(sigdb.for_manifest(so, so.get_tag("other") or "")[0].raw).encode()
    for i, (payload, lie) in enumerate([(b"x" * 300, True), (foreign, False), (b"-----BEGIN SSH SIG", False)]):
        work = tmp_path / f"w{i}"
        work.mkdir()
        fake.routes.clear()
        _, signers, _ = _signed_fake(work, fake, payload, lie)
        pol = policy(work, {"default": {"type": "signedBy", "allowedSigners": str(signers)}})
        b = work / "b"
        p = run_cli("--policy", pol, "pull", f"{fake.host}/t:v1", store=b)
        assert p.returncode == 4 and b"signature that the trust policy accepts" in p.stderr, p.stderr
        _nothing_recorded(b)
        got = json.loads(run_cli("pull", f"{fake.host}/t:v1", "--json", store=b, check=True).stdout)
        assert got["signatures"] == 0
