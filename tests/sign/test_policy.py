"""The trust policy: checkout and apply refuse (exit 4, nothing written) what the policy does not accept."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castore.errors import UnsafeInput
from castore.sign.policy import load_policy, parse_policy, select
from tests.sign.signing_util import Cli, allowed, dump_pb, ingest, needs_ssh_keygen, policy, pubkey, ssh_key, ssh_sign


def _signed_setup(cli: Cli, tmp_path: Path) -> tuple[Path, Path]:
    """web: signed by release@example.com; unsigned: not signed; returns (allowed_signers, key)."""
    ingest(cli, tmp_path, "web")
    ingest(cli, tmp_path, "unsigned", b"nobody signed this\n")
    key = tmp_path / "rel"
    cli("keygen", key, "-C", "release@example.com", check=True)
    cli("sign", "web", "--key", key, check=True)
    return allowed(tmp_path, [f"release@example.com,ops@example.com {pubkey(key)}"]), key


def test_checkout_and_apply_enforce_signed_by(cli: Cli, tmp_path: Path) -> None:
    signers, _ = _signed_setup(cli, tmp_path)
    pol = policy(
        tmp_path,
        {
            "default": {"type": "accept"},
            "scopes": {
                "web": {"type": "signedBy", "allowedSigners": signers.name, "principals": ["release@example.com"]},
                "unsigned": {"type": "signedBy", "allowedSigners": str(signers)},
            },
        },
    )
    ok = tmp_path / "ok"
    cli("--policy", pol, "checkout", "web", ok, check=True)
    assert (ok / "d" / "f").read_bytes() == b"hello\n"
    out = tmp_path / "out"
    p = cli("--policy", pol, "checkout", "unsigned", out)
    assert p.returncode == 4 and b"has no signature" in p.stderr and b"scope 'unsigned'" in p.stderr
    assert not out.exists()
    root = tmp_path / "root"
    root.mkdir()
    (root / "keep").write_bytes(b"mine")
    p = cli("--policy", pol, "apply", root, "unsigned")
    assert p.returncode == 4 and sorted(os.listdir(root)) == ["keep"]
    cli("--policy", pol, "apply", root, "web", check=True)
    assert (root / "d" / "f").exists()


def test_wrong_principal_and_wrong_key(cli: Cli, tmp_path: Path) -> None:
    signers, _ = _signed_setup(cli, tmp_path)
    cli("keygen", tmp_path / "other", check=True)
    other = allowed(tmp_path, [f"release@example.com {pubkey(tmp_path / 'other')}"], "other_signers")
    for scope in (
        {"type": "signedBy", "allowedSigners": str(signers), "principals": ["someone@else"]},
        {"type": "signedBy", "allowedSigners": str(other)},
    ):
        pol = policy(tmp_path, {"default": {"type": "reject"}, "scopes": {"web": scope}})
        out = tmp_path / "out"
        p = cli("--policy", pol, "checkout", "web", out)
        assert p.returncode == 4 and b"no valid signature" in p.stderr, p.stderr
        assert not out.exists()


def test_tampered_manifest_is_refused(cli: Cli, tmp_path: Path, store_path: Path) -> None:
    signers, _ = _signed_setup(cli, tmp_path)
    d = cli("list", "--json", check=True)
    import json

    digest = next(r["digest"] for r in json.loads(d.stdout)["names"] if r["name"] == "web")
    blob = store_path / "blobs" / "sha256" / digest[7:9] / digest[7:]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    pol = policy(tmp_path, {"default": {"type": "signedBy", "allowedSigners": str(signers)}})
    out = tmp_path / "out"
    p = cli("--policy", pol, "checkout", "web", out)
    assert p.returncode == 4 and not out.exists()


def test_reject_longest_scope_default_and_where_the_policy_comes_from(cli: Cli, tmp_path: Path) -> None:
    signers, _ = _signed_setup(cli, tmp_path)
    digest = cli("list", "--json", check=True)
    cli("tag", "web", "team/web", check=True)
    pol = policy(
        tmp_path,
        {
            "default": {"type": "reject"},
            "scopes": {
                "team/": {"type": "reject"},
                "team/web": {"type": "signedBy", "allowedSigners": str(signers)},
                "web": [{"type": "accept"}],
            },
        },
    )
    cli("--policy", pol, "checkout", "team/web", tmp_path / "a", check=True)  # longest scope wins
    cli("--policy", pol, "checkout", "web", tmp_path / "b", check=True)
    p = cli("--policy", pol, "checkout", "unsigned", tmp_path / "c")  # default: reject
    assert p.returncode == 4 and b"the default policy rejects it" in p.stderr
    import json

    d = next(r["digest"] for r in json.loads(digest.stdout)["names"] if r["name"] == "web")
    p = cli("--policy", pol, "checkout", d, tmp_path / "d")  # by digest alone: the default
    assert p.returncode == 4 and not (tmp_path / "d").exists()
    # $CONTINUITY_POLICY, then $XDG_CONFIG_HOME/continuity/policy.json
    env_pol = policy(tmp_path, {"default": {"type": "reject"}}, "env.json")
    p = cli("checkout", "web", tmp_path / "e", env={"CONTINUITY_POLICY": str(env_pol)})
    assert p.returncode == 4
    xdg = tmp_path / "xdg"
    (xdg / "continuity").mkdir(parents=True)
    policy(xdg / "continuity", {"default": {"type": "reject"}})
    p = cli("checkout", "web", tmp_path / "f", env={"XDG_CONFIG_HOME": str(xdg), "CONTINUITY_POLICY": ""})
    assert p.returncode == 4
    cli(
        "checkout",
        "web",
        tmp_path / "g",
        env={"XDG_CONFIG_HOME": str(tmp_path / "none"), "CONTINUITY_POLICY": ""},
        check=True,
    )


@needs_ssh_keygen
def test_policy_accepts_an_ssh_keygen_signature(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    key = ssh_key(tmp_path, "alice")
    sig = tmp_path / "s"
    sig.write_bytes(ssh_sign(key, dump_pb(cli, "web")))
    cli("sign", "web", "--import", sig, check=True)
    signers = allowed(tmp_path, [f'alice@example.com namespaces="continuity,git" {pubkey(key)}'])
    pol = policy(
        tmp_path, {"default": {"type": "signedBy", "allowedSigners": str(signers), "principals": ["alice@example.com"]}}
    )
    cli("--policy", pol, "checkout", "web", tmp_path / "out", check=True)
    # namespaces that exclude "continuity", or a validity window in the past: refused
    for opts in ('namespaces="git"', 'valid-before="20200101Z"', 'valid-after="29990101"'):
        allowed(tmp_path, [f"alice@example.com {opts} {pubkey(key)}"])
        p = cli("--policy", pol, "checkout", "web", tmp_path / "no")
        assert p.returncode == 4, opts


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"scopes": {}},
        {"default": {"type": "maybe"}},
        {"default": {"type": "signedBy"}},
        {"default": []},
        {"default": {"type": "signedBy", "allowedSigners": "f", "principals": "x"}},
        {"default": {"type": "accept"}, "extra": 1},
    ],
)
def test_bad_policies_are_refused(doc: object, tmp_path: Path) -> None:
    with pytest.raises(UnsafeInput):
        parse_policy(doc, str(tmp_path / "p.json"))


def test_bad_policy_file_is_exit_3(cli: Cli, tmp_path: Path) -> None:
    ingest(cli, tmp_path, "web")
    (tmp_path / "p.json").write_text("{not json")
    policy(tmp_path, {"default": {"type": "signedBy", "allowedSigners": "nowhere"}}, "nosigners.json")
    for pol in (tmp_path / "p.json", tmp_path / "missing.json", tmp_path / "nosigners.json"):
        p = cli("--policy", pol, "checkout", "web", tmp_path / "out")
        assert p.returncode == 3 and (b"trust policy" in p.stderr or b"allowed_signers" in p.stderr), p.stderr
        assert not (tmp_path / "out").exists()


def test_scope_selection() -> None:
    pol = parse_policy(
        {
            "default": {"type": "accept"},
            "scopes": {
                "web": {"type": "reject"},
                "reg.example/team/": {"type": "reject"},
                "reg.example/team/app": {"type": "accept"},
            },
        },
        "/p.json",
    )
    assert select(pol, ["web"])[0] == "web"
    assert select(pol, ["web:v1"])[0] == "web"
    assert select(pol, ["webapp"])[0] is None  # whole components only
    assert select(pol, ["reg.example/team/x:1"])[0] == "reg.example/team/"
    assert select(pol, ["reg.example/team/app:v2", "local"])[0] == "reg.example/team/app"
    assert select(pol, [])[0] is None
    assert load_policy(None).accepts_all or True  # the machine's own policy, if any, parses


def test_mount_enforces_the_policy(cli: Cli, tmp_path: Path) -> None:
    pytest.importorskip("pyfuse3")
    _signed_setup(cli, tmp_path)
    pol = policy(tmp_path, {"default": {"type": "reject"}})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = cli("--policy", pol, "mount", "web", mnt)
    assert p.returncode == 4 and b"rejects it" in p.stderr
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
