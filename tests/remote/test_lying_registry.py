"""A fake registry on loopback that lies (wrong bytes, sizes, digests, huge answers) or asks for
credentials: pull refuses with exit 4 (lies) or 1 (errors), one line, and records nothing."""

from __future__ import annotations

import base64
import json
import os
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from castore.digest import hash_bytes
from castore.remote.oci import CONFIG_DIGEST, MANIFEST_MEDIA_TYPE, OCI_INDEX
from castore.store import Store
from castore.testing.trees import basic
from tests.helpers import run_cli
from tests.remote.registry import FakeRegistry, artifact

REPO = "lies/tree"


@pytest.fixture
def served(tmp_path: Path, fake: FakeRegistry) -> tuple[FakeRegistry, str, bytes, dict[str, bytes]]:
    """A tree ingested into a source store; the fake serves its honest artifact under :v1."""
    src = tmp_path / "src"
    basic(src)
    a = tmp_path / "a"
    d = run_cli("ingest", src, store=a, check=True).stdout.decode().strip()
    oci, blobs = artifact(Store.open(str(a)), d)
    fake.serve_artifact(REPO, "v1", oci, blobs)
    return fake, d, oci, blobs


def _pull(
    fake: FakeRegistry, store: Path, ref: str = "v1", *args: str, env: dict[str, str] | None = None
) -> tuple[int, str]:
    sep = "@" if ref.startswith("sha256:") else ":"
    p = run_cli("pull", f"{fake.host}/{REPO}{sep}{ref}", "--jobs", "2", *args, store=store, env=env)
    return p.returncode, p.stderr.decode(errors="replace")


def _refused(tmp_path: Path, fake: FakeRegistry, code: int, text: str, ref: str = "v1") -> None:
    b = tmp_path / "b"
    rc, err = _pull(fake, b, ref)
    assert rc == code and text in err and err.count("\n") == 1, err
    s = Store.open(str(b))
    assert s.tags() == [] and s.manifests() == []
    assert [p for p in (b / "tmp").iterdir() if not p.name.startswith(".")] == []


def _biggest(blobs: dict[str, bytes], d: str) -> str:
    return max((x for x in blobs if x != d), key=lambda x: len(blobs[x]))


def test_honest_fake_pulls(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, oci, _ = served
    rc, err = _pull(fake, tmp_path / "b")
    assert rc == 0, err
    rc, err = _pull(fake, tmp_path / "c", hash_bytes(oci))
    assert rc == 0, err
    accepts = [h.get("Accept", "") for m, p, h in fake.requests if "/manifests/" in p]
    assert all("application/vnd.oci.image.manifest.v1+json" in a for a in accepts)


def test_wrong_bytes_same_size(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, _, blobs = served
    victim = _biggest(blobs, d)
    bad = bytearray(blobs[victim])
    bad[len(bad) // 2] ^= 1
    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = (200, {}, bytes(bad))
    _refused(tmp_path, fake, 4, f"blob {victim} has digest")


def test_wrong_continuity_manifest_bytes(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    fake, d, _, blobs = served
    fake.routes[("GET", f"/v2/{REPO}/blobs/{d}")] = (200, {}, b"\x00" * len(blobs[d]))
    _refused(tmp_path, fake, 4, f"blob {d} has digest")


def test_oversize_blob(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, _, blobs = served
    victim = _biggest(blobs, d)
    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = (200, {}, blobs[victim] + b"more")
    _refused(tmp_path, fake, 4, f"blob {victim} has size")


def test_oversize_blob_without_length(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    fake, d, _, blobs = served
    victim = _biggest(blobs, d)

    def endless(h: BaseHTTPRequestHandler) -> None:
        # HTTP/1.0 style: no Content-Length, the body ends when the connection closes (bounded here)
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            for _ in range(64):
                h.wfile.write(b"x" * (1 << 16))
        except OSError:
            pass
        h.close_connection = True

    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = endless
    _refused(tmp_path, fake, 4, f"blob {victim} is larger than")


def test_short_blob_is_a_network_error(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    fake, d, _, blobs = served
    victim = _biggest(blobs, d)

    def short(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(blobs[victim])))
        h.end_headers()
        h.wfile.write(blobs[victim][:100])
        h.close_connection = True

    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = short
    _refused(tmp_path, fake, 1, f"GET blob {victim}")


def test_pinned_digest_mismatch(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, _, oci, _ = served
    other = hash_bytes(b"something else")
    fake.routes[("GET", f"/v2/{REPO}/manifests/{other}")] = (200, {}, oci)
    _refused(tmp_path, fake, 4, f"manifest {other} has digest", other)


def test_layer_size_lies(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, oci, blobs = served
    doc = json.loads(oci)
    doc["layers"][1]["size"] += 1
    fake.serve_artifact(REPO, "v1", json.dumps(doc).encode(), blobs)
    _refused(tmp_path, fake, 4, "the manifest says")


@pytest.mark.parametrize("case", ["declared-huge", "manifest-layer-huge", "not-json", "index", "deep-json"])
def test_huge_or_foreign_manifests(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]], case: str
) -> None:
    fake, d, oci, blobs = served
    route = f"/v2/{REPO}/manifests/v1"
    code = 4
    if case == "declared-huge":

        def huge(h: BaseHTTPRequestHandler) -> None:
            h.send_response(200)
            h.send_header("Content-Length", str(100 << 20))
            h.end_headers()
            h.wfile.write(oci)
            h.close_connection = True

        fake.routes[("GET", route)] = huge
        text = "limit"
    elif case == "manifest-layer-huge":
        doc = json.loads(oci)
        doc["layers"][0] = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": d, "size": 8 << 30}
        fake.routes[("GET", route)] = (200, {}, json.dumps(doc).encode())
        text = "out of range"
    elif case == "not-json":
        fake.routes[("GET", route)] = (200, {}, b"\x89PNG")
        text = "not JSON"
    elif case == "index":
        fake.routes[("GET", route)] = (
            200,
            {"Content-Type": OCI_INDEX},
            json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode(),
        )
        text, code = "no image for", 1  # an image index (castore.remote.image) without this platform's image
    else:
        fake.routes[("GET", route)] = (200, {}, b"[" * 100000 + b"]" * 100000)
        text = "not JSON"
    _refused(tmp_path, fake, code, text)


def test_server_errors_exit_1(tmp_path: Path, fake: FakeRegistry) -> None:
    fake.routes[("GET", f"/v2/{REPO}/manifests/v1")] = (
        503,
        {},
        b'{"errors":[{"code":"UNAVAILABLE","message":"try later \\u001b[31m"}]}',
    )
    _refused(tmp_path, fake, 1, "503 UNAVAILABLE: try later")
    assert sum(1 for m, p, _ in fake.requests if p.endswith("/manifests/v1")) == 5  # bounded retries


def _auth_gate(fake: FakeRegistry, expected: str, challenge: str) -> None:
    """Wrap every route so that it answers 401 unless Authorization is ``expected``."""
    inner = dict(fake.routes)

    def gated(route: object) -> object:
        def serve(h: BaseHTTPRequestHandler) -> None:
            if h.headers.get("Authorization") != expected:
                body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                h.send_response(401)
                h.send_header("WWW-Authenticate", challenge)
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
                return
            if callable(route):
                route(h)
                return
            status, headers, body = route  # type: ignore[misc]
            h.send_response(status)
            for k, v in headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)

        return serve

    for k, v in inner.items():
        fake.routes[k] = gated(v)  # type: ignore[assignment]


def test_basic_auth(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, _, _ = served
    _auth_gate(fake, "Basic " + base64.b64encode(b"alice:s3cret").decode(), 'Basic realm="fake"')
    rc, err = _pull(fake, tmp_path / "b")
    assert rc == 1 and "authentication required" in err and err.count("\n") == 1, err
    env = {"CONTINUITY_REGISTRY_USERNAME": "alice", "CONTINUITY_REGISTRY_PASSWORD": "wrong"}
    rc, err = _pull(fake, tmp_path / "b", env=env)
    assert rc == 1 and "authentication failed" in err, err
    env["CONTINUITY_REGISTRY_PASSWORD"] = "s3cret"
    rc, err = _pull(fake, tmp_path / "b", env=env)
    assert rc == 0, err


def test_bearer_token(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, d, _, _ = served
    _auth_gate(
        fake, "Bearer tok-123", f'Bearer realm="http://{fake.host}/token",service="fake",scope="repository:{REPO}:pull"'
    )
    fake.routes[("GET", "/token")] = (200, {"Content-Type": "application/json"}, b'{"token":"tok-123"}')
    rc, err = _pull(fake, tmp_path / "b")
    assert rc == 0, err
    tokens = [p for m, p, _ in fake.requests if p.startswith("/token")]
    assert len(tokens) == 1 and "scope=repository%3Alies%2Ftree%3Apull" in tokens[0] and "service=fake" in tokens[0]


def test_bad_name_is_refused_before_any_request(tmp_path: Path, fake: FakeRegistry) -> None:
    rc, err = _pull(fake, tmp_path / "b", "v1", "--name", "../evil")
    assert rc == 3 and "invalid name" in err
    assert fake.requests == []


def test_no_traceback_on_garbage_location(tmp_path: Path, fake: FakeRegistry) -> None:
    a = tmp_path / "a"
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(b"x")
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    fake.routes[("POST", f"/v2/{REPO}/blobs/uploads/")] = (202, {"Location": "ftp://elsewhere/\x7f"}, b"")
    p = run_cli("push", "t", f"{fake.host}/{REPO}:v1", store=a)
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1, p.stderr


def test_push_credentials_stay_on_the_registry_origin(tmp_path: Path, fake: FakeRegistry) -> None:
    a = tmp_path / "a"
    src = tmp_path / "src"
    os.makedirs(src)
    (src / "f").write_bytes(b"x")
    run_cli("ingest", src, "--name", "t", store=a, check=True)
    storage = FakeRegistry()  # another origin, as a storage backend an upload Location may point at
    try:
        storage.routes[("PUT", "/upload")] = (201, {}, b"")
        fake.routes[("POST", f"/v2/{REPO}/blobs/uploads/")] = (202, {"Location": f"http://{storage.host}/upload"}, b"")
        fake.routes[("PUT", f"/v2/{REPO}/manifests/v1")] = (201, {}, b"")
        _auth_gate(fake, "Basic " + base64.b64encode(b"bob:pw").decode(), 'Basic realm="fake"')
        env = {"CONTINUITY_REGISTRY_USERNAME": "bob", "CONTINUITY_REGISTRY_PASSWORD": "pw"}
        p = run_cli("push", "t", f"{fake.host}/{REPO}:v1", "--json", store=a, env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["uploaded"] == 4  # config, manifest, one pack and its index
        puts = [h for m, _, h in storage.requests if m == "PUT"]
        assert len(puts) == 4 and not any("Authorization" in h for h in puts)
        assert any("Authorization" in h for m, _, h in fake.requests if m == "PUT")
    finally:
        storage.close()


def test_unreachable_token_realm(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, _, _, _ = served
    _auth_gate(fake, "Bearer x", 'Bearer realm="http://127.0.0.1:1/token",service="fake"')
    rc, err = _pull(fake, tmp_path / "b")
    assert rc == 1 and "token request" in err and err.count("\n") == 1, err


def test_trickling_registry_is_cut_off(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    fake, d, _, blobs = served
    victim = min((x for x in blobs if x not in (d, CONFIG_DIGEST) and len(blobs[x]) >= 80), key=lambda x: len(blobs[x]))

    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(blobs[victim])))
        h.end_headers()
        try:
            for i in range(60):  # one byte every 0.1 s: never idle for a whole timeout; bounded anyway
                h.wfile.write(blobs[victim][i : i + 1])
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass
        h.close_connection = True

    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = trickle
    b = tmp_path / "b"
    start = time.monotonic()
    rc, err = _pull(fake, b, env={"CONTINUITY_REGISTRY_TIMEOUT": "0.5"})
    assert rc == 1 and "too slow" in err and err.count("\n") == 1, err
    assert time.monotonic() - start < 30
    assert Store.open(str(b)).tags() == []
