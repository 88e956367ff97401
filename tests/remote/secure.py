"""Fixtures for registries as people run them: TLS with a CA made here, htpasswd users, a bearer token server.

- ``pki``: a CA, a server certificate for 127.0.0.1 signed by it, an expired one, another
  (unknown) CA, a client CA and a client certificate (made with ``cryptography``).
- ``tls_registry``: Debian's docker-registry on 127.0.0.1 over TLS with htpasswd users
  (``alice``/``s3cret``; bcrypt hashes from the ``bcrypt`` package), configured by the
  ``REGISTRY_*`` environment variables. ``expired_registry`` serves the expired certificate.
- ``token_registry``: docker-registry with ``auth: token`` and a small token server here
  (RS256 JWTs with an ``x5c`` header the registry checks against the root bundle).
- ``oci_image``: an OCI layout made with ``umoci`` (3 layers: a whiteout, an opaque
  directory, hardlinks, xattrs, odd modes and owners) and its ``umoci unpack`` rootfs.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.remote.registry import _free_port

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
USER, PASSWORD = "alice", "s3cret"
CONFIG = """version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
http:
  addr: 127.0.0.1:{port}
"""


def _crypto():  # noqa: ANN202 - imported lazily: only these fixtures need it
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    return x509, hashes, serialization, ec, rsa, padding, NameOID, ExtendedKeyUsageOID


def _key_pem(key: object) -> bytes:
    _, _, serialization, *_ = _crypto()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # type: ignore[attr-defined]
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: object,
    issuer: tuple[object, object] | None = None,
    *,
    ca: bool = False,
    ip: str | None = None,
    days: tuple[int, int] = (-1, 30),
    client: bool = False,
) -> object:
    x509, hashes, _, ec, rsa, _, NameOID, EKU = _crypto()
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)  # type: ignore[attr-defined]
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())  # type: ignore[attr-defined]
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([EKU.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())  # type: ignore[arg-type]


def _pem(cert: object) -> bytes:
    _, _, serialization, *_ = _crypto()
    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined]


@dataclass
class Pki:
    dir: Path
    ca: Path  # ca.crt
    server_cert: Path
    server_key: Path
    expired_cert: Path
    other_ca: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    token_cert: Path
    token_key_pem: bytes
    token_cert_der: bytes


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    x509, hashes, serialization, ec, rsa, *_ = _crypto()
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("continuity test CA", ca_key, ca=True)
    srv_key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("127.0.0.1", srv_key, (ca, ca_key), ip="127.0.0.1")
    expired = _cert("127.0.0.1", srv_key, (ca, ca_key), ip="127.0.0.1", days=(-30, -1))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("some other CA", other_key, ca=True)
    cca_key = ec.generate_private_key(ec.SECP256R1())
    cca = _cert("client CA", cca_key, ca=True)
    cli_key = ec.generate_private_key(ec.SECP256R1())
    cli = _cert("client", cli_key, (cca, cca_key), client=True)
    tok_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tok = _cert("token issuer", tok_key)
    files = {
        "ca.crt": _pem(ca),
        "server.pem": _pem(srv) + _pem(ca),
        "server.key": _key_pem(srv_key),
        "expired.pem": _pem(expired),
        "other-ca.crt": _pem(other),
        "client-ca.crt": _pem(cca),
        "client.cert": _pem(cli),
        "client.key": _key_pem(cli_key),
        "token.crt": _pem(tok),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return Pki(
        d,
        d / "ca.crt",
        d / "server.pem",
        d / "server.key",
        d / "expired.pem",
        d / "other-ca.crt",
        d / "client-ca.crt",
        d / "client.cert",
        d / "client.key",
        d / "token.crt",
        _key_pem(tok_key),
        tok.public_bytes(serialization.Encoding.DER),
    )


def _listening(port: int, proc: subprocess.Popen[bytes], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def htpasswd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bcrypt = pytest.importorskip("bcrypt")
    p = tmp_path_factory.mktemp("htpasswd") / "htpasswd"
    p.write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)) + b"\n")
    return p


def _serve_registry(base: Path, env: dict[str, str]) -> Iterator[str]:
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry (Debian package docker-registry) is not installed; scripts/test installs it")
    port = _free_port()
    cfg = base / "config.yml"
    cfg.write_text(CONFIG.format(root=base / "data", port=port))
    log = open(base / "registry.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
    )
    try:
        if not _listening(port, proc):
            pytest.fail("docker-registry did not start: " + (base / "registry.log").read_text()[-2000:])
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _htpasswd_env(htpasswd: Path) -> dict[str, str]:
    return {
        "REGISTRY_AUTH": "htpasswd",
        "REGISTRY_AUTH_HTPASSWD_REALM": "continuity-test",
        "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd),
    }


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki, htpasswd_file: Path) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a registry over TLS (certificate from ``pki.ca``) with htpasswd users."""
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.server_cert),
        "REGISTRY_HTTP_TLS_KEY": str(pki.server_key),
        **_htpasswd_env(htpasswd_file),
    }
    yield from _serve_registry(tmp_path_factory.mktemp("tls-registry"), env)


@pytest.fixture(scope="session")
def mtls_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[str]:
    """A TLS registry that wants a client certificate signed by ``pki.client_ca``."""
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.server_cert),
        "REGISTRY_HTTP_TLS_KEY": str(pki.server_key),
        "REGISTRY_HTTP_TLS_CLIENTCAS": f"[{pki.client_ca}]",
    }
    yield from _serve_registry(tmp_path_factory.mktemp("mtls-registry"), env)


@pytest.fixture(scope="session")
def expired_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[str]:
    env = {"REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.expired_cert), "REGISTRY_HTTP_TLS_KEY": str(pki.server_key)}
    yield from _serve_registry(tmp_path_factory.mktemp("expired-registry"), env)


# ------------------------------------------------------------------ token server


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """GET /token?service=&scope=: Basic alice:s3cret -> a JWT for the scopes asked (anyone else: 401)."""

    def __init__(self, pki: Pki) -> None:
        from cryptography.hazmat.primitives import serialization

        self.key = serialization.load_pem_private_key(pki.token_key_pem, None)
        self.cert_der = pki.token_cert_der
        self.requests: list[dict[str, str]] = []
        srv = self
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                srv.requests.append(dict(self.headers))
                u = urlsplit(self.path)
                if u.path != "/token" or self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                q = parse_qs(u.query)
                body = json.dumps({"token": srv.jwt(q.get("service", [""])[0], q.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def jwt(self, service: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for s in scopes:
            typ, name, actions = s.split(":")[0], ":".join(s.split(":")[1:-1]), s.split(":")[-1]
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {
            "iss": "continuity-test-issuer",
            "sub": USER,
            "aud": service,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg]
        return signing + "." + _b64url(sig)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[str, TokenServer]]:
    """(``127.0.0.1:PORT`` of a plain-http registry with bearer token auth, its token server)."""
    ts = TokenServer(pki)
    env = {
        "REGISTRY_AUTH": "token",
        "REGISTRY_AUTH_TOKEN_REALM": ts.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": "continuity-test",
        "REGISTRY_AUTH_TOKEN_ISSUER": "continuity-test-issuer",
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(pki.token_cert),
    }
    try:
        for host in _serve_registry(tmp_path_factory.mktemp("token-registry"), env):
            yield host, ts
    finally:
        ts.close()


@pytest.fixture(scope="session")
def tls_token_registry(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[str, TokenServer]]:
    """A registry over TLS whose bearer token realm is plain http (``TokenServer.realm``): credentials must
    never be sent there."""
    ts = TokenServer(pki)
    env = {
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(pki.server_cert),
        "REGISTRY_HTTP_TLS_KEY": str(pki.server_key),
        "REGISTRY_AUTH": "token",
        "REGISTRY_AUTH_TOKEN_REALM": ts.realm,
        "REGISTRY_AUTH_TOKEN_SERVICE": "continuity-test",
        "REGISTRY_AUTH_TOKEN_ISSUER": "continuity-test-issuer",
        "REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE": str(pki.token_cert),
    }
    try:
        for host in _serve_registry(tmp_path_factory.mktemp("tls-token-registry"), env):
            yield host, ts
    finally:
        ts.close()
