"""Credentials and certificates as the container tools keep them, against real registries:
docker-registry over TLS (a CA made here) with htpasswd users, one wanting client certificates,
one with an expired certificate, and one with bearer tokens from a token server.

Every test runs with its own HOME, XDG dirs, REGISTRY_AUTH_FILE and certs.d roots (``_env``)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from castore.testing.images import build_layout
from tests.helpers import have, run_cli
from tests.remote.secure import PASSWORD, USER, Pki, TokenServer

needs_skopeo = pytest.mark.skipif(not (have("skopeo") and have("umoci")), reason="needs skopeo and umoci")


def _env(tmp: Path, **more: str) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
        "XDG_CONFIG_HOME": str(tmp / "config"),
        "DOCKER_CONFIG": str(home / ".docker"),
        "REGISTRY_AUTH_FILE": "",
        "CONTINUITY_CERTS_D": str(tmp / "certs.d"),
        "CONTINUITY_REGISTRY_USERNAME": "",
        "CONTINUITY_REGISTRY_PASSWORD": "",
        "PATH": os.environ.get("PATH", ""),
    }
    env.update(more)
    return env


def _cadir(tmp: Path, pki: Pki, name: str = "cadir") -> Path:
    d = tmp / name
    d.mkdir(exist_ok=True)
    shutil.copy(pki.ca, d / "ca.crt")
    return d


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have("umoci"):
        pytest.skip("needs umoci")
    work = tmp_path_factory.mktemp("tiny")

    def files(root: Path) -> None:
        (root / "etc").mkdir()
        (root / "etc/motd").write_text("welcome\n")

    build_layout(work / "layout", "t", [files], work=work)
    return work / "layout"


def _seed_tree(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    (src / "a").write_text("alpha\n")
    (src / "d").mkdir()
    (src / "d/b").write_bytes(os.urandom(5000))
    return src


def test_login_pull_push_logout_over_tls(tmp_path: Path, pki: Pki, tls_registry: str) -> None:
    cadir = _cadir(tmp_path, pki)
    env = _env(tmp_path)
    st = tmp_path / "st"
    run_cli("ingest", _seed_tree(tmp_path), "--name", "t", store=st, check=True)
    ref = f"{tls_registry}/team/tree:1"
    # no credentials anywhere: told how to give them, nothing sent
    p = run_cli("push", "t", ref, "--cert-dir", cadir, store=st, env=env)
    assert p.returncode == 1 and b"authentication required" in p.stderr and b"continuity login" in p.stderr
    # a wrong password: login refuses and writes nothing
    p = run_cli("login", tls_registry, "-u", USER, "--password-stdin", "--cert-dir", cadir, input=b"wrong\n", env=env)
    assert p.returncode == 1 and b"authentication failed" in p.stderr, p.stderr
    auth = tmp_path / "run/containers/auth.json"
    assert not auth.exists()
    p = run_cli(
        "login",
        tls_registry,
        "-u",
        USER,
        "--password-stdin",
        "--cert-dir",
        cadir,
        input=PASSWORD.encode() + b"\n",
        env=env,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(auth.read_text())
    assert base64.b64decode(doc["auths"][tls_registry]["auth"]) == f"{USER}:{PASSWORD}".encode()
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    # podman's file is read by push and pull; https for the loopback registry because certificates were given
    run_cli("push", "t", ref, "--cert-dir", cadir, store=st, env=env, check=True)
    st2 = tmp_path / "st2"
    run_cli("pull", ref, "--cert-dir", cadir, store=st2, env=env, check=True)
    run_cli("verify", tmp_path / "src", ref, store=st2, env=env, check=True)
    # logout forgets them, and keeps the rest of the file
    doc["auths"]["other.example"] = {"auth": base64.b64encode(b"x:y").decode()}
    auth.write_text(json.dumps(doc))
    run_cli("logout", tls_registry, env=env, check=True)
    assert list(json.loads(auth.read_text())["auths"]) == ["other.example"]
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st2, env=env)
    assert p.returncode == 1 and b"authentication required" in p.stderr
    p = run_cli("logout", tls_registry, env=env)
    assert p.returncode == 1 and b"not logged in" in p.stderr


def test_creds_option_and_registry_auth_file(tmp_path: Path, pki: Pki, tls_registry: str) -> None:
    cadir = _cadir(tmp_path, pki)
    st = tmp_path / "st"
    run_cli("ingest", _seed_tree(tmp_path), "--name", "t", store=st, check=True)
    ref = f"{tls_registry}/team/creds:1"
    env = _env(tmp_path)
    run_cli("push", "t", ref, "--cert-dir", cadir, "--creds", f"{USER}:{PASSWORD}", store=st, env=env, check=True)
    p = run_cli("pull", ref, "--cert-dir", cadir, "--creds", f"{USER}:nope", store=st, env=env)
    assert p.returncode == 1 and b"user 'alice'" in p.stderr and b"refused" in p.stderr
    # USER without a password reads it from --password-stdin
    run_cli(
        "pull",
        ref,
        "--cert-dir",
        cadir,
        "--creds",
        USER,
        "--password-stdin",
        input=PASSWORD.encode(),
        store=st,
        env=env,
        check=True,
    )
    # REGISTRY_AUTH_FILE: login writes there, pull reads it
    af = tmp_path / "elsewhere/auth.json"
    env2 = _env(tmp_path, REGISTRY_AUTH_FILE=str(af))
    run_cli("login", tls_registry, "--creds", f"{USER}:{PASSWORD}", "--cert-dir", cadir, env=env2, check=True)
    assert af.exists() and not (tmp_path / "run/containers/auth.json").exists()
    run_cli("pull", ref, "--cert-dir", cadir, store=st, env=env2, check=True)


def test_docker_config_and_credential_helpers(tmp_path: Path, pki: Pki, tls_registry: str) -> None:
    cadir = _cadir(tmp_path, pki)
    st = tmp_path / "st"
    run_cli("ingest", _seed_tree(tmp_path), "--name", "t", store=st, check=True)
    ref = f"{tls_registry}/team/docker:1"
    env = _env(tmp_path)
    docker = Path(env["DOCKER_CONFIG"])
    docker.mkdir(parents=True)
    cfg = docker / "config.json"
    cfg.write_text(
        json.dumps(
            {"auths": {f"https://{tls_registry}": {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}
        )
    )
    run_cli("push", "t", ref, "--cert-dir", cadir, store=st, env=env, check=True)
    # credHelpers / credsStore: docker-credential-NAME get, server on stdin
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen = tmp_path / "helper-saw"
    (bindir / "docker-credential-good").write_text(
        f'#!/bin/sh\n[ "$1" = get ] || exit 3\ncat > {seen}\n'
        f'printf \'{{"ServerURL":"x","Username":"{USER}","Secret":"{PASSWORD}"}}\'\n'
    )
    (bindir / "docker-credential-broken").write_text("#!/bin/sh\necho 'keychain is locked' >&2\nexit 1\n")
    (bindir / "docker-credential-empty").write_text(
        "#!/bin/sh\necho 'credentials not found in native keychain'\nexit 1\n"
    )
    for f in bindir.iterdir():
        f.chmod(0o755)
    henv = {**env, "PATH": f"{bindir}:{env['PATH']}"}
    cfg.write_text(json.dumps({"credHelpers": {tls_registry: "good"}}))
    run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv, check=True)
    assert seen.read_text() == tls_registry
    cfg.write_text(json.dumps({"credsStore": "good", "auths": {tls_registry: {}}}))
    run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv, check=True)
    cfg.write_text(json.dumps({"credHelpers": {tls_registry: "broken"}}))
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv)
    assert p.returncode == 1 and b"docker-credential-broken failed" in p.stderr and b"keychain is locked" in p.stderr
    assert p.stderr.count(b"\n") == 1
    cfg.write_text(json.dumps({"credsStore": "missing"}))
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv)
    assert p.returncode == 1 and b"docker-credential-missing is not installed" in p.stderr
    cfg.write_text(json.dumps({"credsStore": "empty"}))  # "not found": no credentials, the registry says 401
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv)
    assert p.returncode == 1 and b"authentication required" in p.stderr
    cfg.write_text("{not json")
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=henv)
    assert p.returncode == 1 and b"config.json: not valid JSON" in p.stderr


def test_certs_d_and_tls_refusals(
    tmp_path: Path, pki: Pki, tls_registry: str, expired_registry: str, registry: str
) -> None:
    env = _env(tmp_path)
    creds = ["--creds", f"{USER}:{PASSWORD}"]
    st = tmp_path / "st"
    run_cli("ingest", _seed_tree(tmp_path), "--name", "t", store=st, check=True)
    # unknown CA (the system's CAs only): says how to trust it
    p = run_cli("push", "t", f"https://{tls_registry}/a/b:1", *creds, store=st, env=env)
    assert p.returncode == 1 and b"not trusted" in p.stderr and b"--cert-dir" in p.stderr, p.stderr
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(pki.other_ca, other / "ca.crt")
    p = run_cli("push", "t", f"{tls_registry}/a/b:1", "--cert-dir", other, *creds, store=st, env=env)
    assert p.returncode == 1 and b"not trusted" in p.stderr
    # certs.d/HOST:PORT/ca.crt, found without any option (CONTINUITY_CERTS_D stands for /etc/containers/certs.d)
    (tmp_path / "certs.d").mkdir()
    _cadir(tmp_path / "certs.d", pki, tls_registry)
    run_cli("push", "t", f"{tls_registry}/a/b:1", *creds, store=st, env=env, check=True)
    # --tls-verify=false only when asked: then the unknown CA is accepted
    env_none = _env(tmp_path, CONTINUITY_CERTS_D=str(tmp_path / "nothing"))
    run_cli("pull", f"{tls_registry}/a/b:1", "--tls-verify=false", *creds, store=st, env=env_none, check=True)
    # expired certificate: refused, and said so
    p = run_cli("pull", f"{expired_registry}/a/b:1", "--cert-dir", _cadir(tmp_path, pki), store=st, env=env)
    assert p.returncode == 1 and b"expired" in p.stderr, p.stderr
    # https to a plain-http registry suggests --insecure; http to a TLS one suggests https
    p = run_cli("pull", f"https://{registry}/a/b:1", store=st, env=env)
    assert p.returncode == 1 and b"--insecure" in p.stderr, p.stderr
    p = run_cli("pull", f"http://{tls_registry}/a/b:1", store=st, env=env)
    assert p.returncode == 1 and b"speaks https" in p.stderr, p.stderr
    # a broken certs.d entry is named
    bad = tmp_path / "badcerts"
    bad.mkdir()
    (bad / "ca.crt").write_text("not a certificate")
    p = run_cli("pull", f"{tls_registry}/a/b:1", "--cert-dir", bad, store=st, env=env)
    assert p.returncode == 3 and b"ca.crt: not a usable CA certificate" in p.stderr
    (bad / "ca.crt").unlink()
    (bad / "client.cert").write_bytes(pki.client_cert.read_bytes())
    p = run_cli("pull", f"{tls_registry}/a/b:1", "--cert-dir", bad, store=st, env=env)
    assert p.returncode == 3 and b"without its key" in p.stderr


def test_client_certificate(tmp_path: Path, pki: Pki, mtls_registry: str) -> None:
    env = _env(tmp_path)
    st = tmp_path / "st"
    run_cli("ingest", _seed_tree(tmp_path), "--name", "t", store=st, check=True)
    cadir = _cadir(tmp_path, pki)
    p = run_cli("push", "t", f"{mtls_registry}/m/t:1", "--cert-dir", cadir, store=st, env=env)
    assert p.returncode == 1 and b"client.cert" in p.stderr, p.stderr
    shutil.copy(pki.client_cert, cadir / "client.cert")
    shutil.copy(pki.client_key, cadir / "client.key")
    run_cli("push", "t", f"{mtls_registry}/m/t:1", "--cert-dir", cadir, store=st, env=env, check=True)
    run_cli("pull", f"{mtls_registry}/m/t:1", "--cert-dir", cadir, "--name", "back", store=st, env=env, check=True)


@needs_skopeo
def test_token_server_image_pull(tmp_path: Path, tiny_layout: Path, token_registry: tuple[str, TokenServer]) -> None:
    host, ts = token_registry
    env = _env(tmp_path)
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            "--dest-creds",
            f"{USER}:{PASSWORD}",
            f"oci:{tiny_layout}:t",
            f"docker://{host}/tok/img:1",
        ],
        check=True,
        capture_output=True,
    )
    st = tmp_path / "st"
    p = run_cli("pull", f"{host}/tok/img:1", store=st, env=env)
    assert p.returncode == 1 and b"token request refused (401)" in p.stderr and b"continuity login" in p.stderr
    p = run_cli("pull", f"{host}/tok/img:1", "--creds", f"{USER}:bad", store=st, env=env)
    assert p.returncode == 1 and b"token request refused (401)" in p.stderr and b"'alice'" in p.stderr
    n = len(ts.requests)
    run_cli("pull", f"{host}/tok/img:1", "--creds", f"{USER}:{PASSWORD}", store=st, env=env, check=True)
    assert run_cli("ls", f"{host}/tok/img:1", store=st, check=True).stdout.split() == [b"/etc", b"/etc/motd"]
    assert all(r.get("Authorization", "").startswith("Basic ") for r in ts.requests[n:])
    run_cli("login", host, "--creds", f"{USER}:{PASSWORD}", env=env, check=True)
    run_cli("pull", f"{host}/tok/img:1", "--name", "again", store=st, env=env, check=True)


@needs_skopeo
def test_image_over_tls_with_auth(tmp_path: Path, pki: Pki, tls_registry: str, tiny_layout: Path) -> None:
    cadir = _cadir(tmp_path, pki)
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-cert-dir",
            str(cadir),
            "--dest-creds",
            f"{USER}:{PASSWORD}",
            f"oci:{tiny_layout}:t",
            f"docker://{tls_registry}/img/tiny:1",
        ],
        check=True,
        capture_output=True,
    )
    env = _env(tmp_path)
    st = tmp_path / "st"
    run_cli(
        "pull",
        f"{tls_registry}/img/tiny:1",
        "--cert-dir",
        cadir,
        "--creds",
        f"{USER}:{PASSWORD}",
        store=st,
        env=env,
        check=True,
    )
    assert b"/etc/motd" in run_cli("ls", f"{tls_registry}/img/tiny:1", store=st, check=True).stdout


def test_plain_http_token_realm_gets_no_credentials(
    tmp_path: Path, pki: Pki, tls_token_registry: tuple[str, TokenServer]
) -> None:
    """A registry reached over https that sends its clients to a plain-http token realm: the
    credentials (from --creds, or from auth.json after login) are never sent there; the refusal
    names the realm. Without credentials an anonymous token request (no secret) is still made."""
    host, ts = tls_token_registry
    cadir = _cadir(tmp_path, pki)
    env = _env(tmp_path)
    st = tmp_path / "st"
    ref = f"{host}/realm/img:1"
    n = len(ts.requests)
    p = run_cli("pull", ref, "--cert-dir", cadir, "--creds", f"{USER}:{PASSWORD}", store=st, env=env)
    assert p.returncode == 1, p.stderr
    assert p.stderr.startswith(b"continuity: error:") and p.stderr.count(b"\n") == 1, p.stderr
    assert b"token realm" in p.stderr and b"plain http" in p.stderr and b"not sent" in p.stderr, p.stderr
    assert ts.requests[n:] == []  # not even a connection carrying them
    auth = tmp_path / "run/containers/auth.json"
    auth.parent.mkdir(parents=True)
    auth.write_text(json.dumps({"auths": {host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=env)
    assert p.returncode == 1 and b"plain http" in p.stderr, p.stderr
    assert ts.requests[n:] == []
    # anonymous: the token request goes out without any Authorization header (the server says 401)
    auth.unlink()
    p = run_cli("pull", ref, "--cert-dir", cadir, store=st, env=env)
    assert p.returncode == 1 and b"token request refused (401)" in p.stderr, p.stderr
    assert ts.requests[n:] and all("Authorization" not in r for r in ts.requests[n:])
    assert PASSWORD.encode() not in p.stderr
