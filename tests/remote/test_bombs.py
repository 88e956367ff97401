"""A hostile registry on loopback serving compression bombs, huge or lying answers, trickles and
redirects: pull fails with one line and a non-zero exit, stores nothing, and its peak memory stays
small (measured on the real CLI process: ru_maxrss of a fresh child)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from castore.digest import hash_bytes
from castore.errors import CorruptManifest, IntegrityError
from castore.manifest import Manifest, codec
from castore.manifest.bounds import check_parse_cost
from castore.manifest.model import RegularFile, Resource
from castore.remote.oci import build_oci_manifest
from castore.store import Store
from castore.testing.trees import basic
from tests.remote.registry import FakeRegistry, artifact

REPO = "bombs/tree"
DECODED = 512 << 20  # what each bomb inflates to: far over the RSS bound if anything decodes it
MAX_RSS_MIB = 200
TOKEN = "tok-bomb"

_zeros = bytes(1 << 20)


def _gzip(chunks: list[bytes]) -> bytes:
    z = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(z.compress(c) for c in chunks) + z.flush()


def _zeros_chunks() -> list[bytes]:
    return [_zeros] * (DECODED >> 20)


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Content-Encoding value -> a body that decodes to DECODED bytes of zeros."""
    gz = _gzip(_zeros_chunks())
    out = {"gzip": gz, "gzip, gzip": _gzip([gz])}
    try:
        import zstandard
    except ImportError:  # httpx decodes zstd only when zstandard is installed
        return out
    c = zstandard.ZstdCompressor(level=1).compressobj()
    out["zstd"] = b"".join(c.compress(x) for x in _zeros_chunks()) + c.flush()
    return out


@pytest.fixture
def served(tmp_path: Path, fake: FakeRegistry) -> tuple[FakeRegistry, str, bytes, dict[str, bytes]]:
    src = tmp_path / "src"
    basic(src)
    d = _cli(["ingest", str(src)], tmp_path / "a").stdout.decode().strip()
    oci, blobs = artifact(Store.open(str(tmp_path / "a")), d)
    fake.serve_artifact(REPO, "v1", oci, blobs)
    return fake, d, oci, blobs


def _cli(args: list[str], store: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    p = subprocess.run(
        [sys.executable, "-m", "castore", "--store", str(store), *args],
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return p


_MEASURE = (
    "import resource, subprocess, sys\n"
    "p = subprocess.run(sys.argv[2:], capture_output=True)\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.stderr.buffer.write(p.stderr)\n"
    "sys.exit(p.returncode)\n"
)


def _pull(tmp_path: Path, fake: FakeRegistry, env: dict[str, str] | None = None) -> tuple[int, str, float, float]:
    """Run ``pull`` in a fresh process; (exit code, stderr, peak RSS of the CLI in MiB, seconds)."""
    rss = tmp_path / "rss"
    argv = [
        sys.executable,
        "-c",
        _MEASURE,
        str(rss),
        sys.executable,
        "-m",
        "castore",
        "--store",
        str(tmp_path / "b"),
        "pull",
        f"{fake.host}/{REPO}:v1",
        "--jobs",
        "2",
    ]
    start = time.monotonic()
    p = subprocess.run(argv, capture_output=True, env={**os.environ, **(env or {})}, timeout=300)
    took = time.monotonic() - start
    err = p.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    return p.returncode, err, int(rss.read_text()) / 1024, took


def _refused(
    tmp_path: Path, fake: FakeRegistry, code: int, text: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    rc, err, rss, took = _pull(tmp_path, fake, env)
    print(f"peak RSS {rss:.0f} MiB: {err.strip()[:150]}")
    assert rss < MAX_RSS_MIB, f"peak RSS {rss:.0f} MiB"
    assert rc == code and text in err and err.count("\n") == 1 and err.startswith("continuity: error: "), err
    s = Store.open(str(tmp_path / "b"))
    assert s.tags() == [] and s.manifests() == []
    assert [p for p in (tmp_path / "b" / "tmp").iterdir() if not p.name.startswith(".")] == []
    return rss, took


def _answer(status: int, headers: dict[str, str], body: bytes) -> Callable[[BaseHTTPRequestHandler], None]:
    def serve(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        if "Content-Length" not in headers:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except OSError:
            pass

    return serve


def _bearer_gate(fake: FakeRegistry) -> None:
    """Every route answers 401 Bearer (realm: /token on the same server) unless it gets our token."""
    for key, route in list(fake.routes.items()):

        def serve(h: BaseHTTPRequestHandler, route: object = route) -> None:
            if h.headers.get("Authorization") != f"Bearer {TOKEN}":
                _answer(
                    401,
                    {"WWW-Authenticate": f'Bearer realm="http://{fake.host}/token",service="fake"'},
                    b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                )(h)
            elif callable(route):
                route(h)
            else:
                _answer(*route)(h)  # type: ignore[misc]

        fake.routes[key] = serve


ENCODINGS = ["gzip", "zstd", "gzip, gzip"]


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("where", ["manifest", "blob", "error-body", "token"])
def test_compression_bomb(
    tmp_path: Path,
    served: tuple[FakeRegistry, str, bytes, dict[str, bytes]],
    bombs: dict[str, bytes],
    where: str,
    enc: str,
) -> None:
    if enc not in bombs:
        pytest.skip("zstandard is not installed")
    fake, d, oci, blobs = served
    bomb = _answer(200, {"Content-Encoding": enc, "Content-Type": "application/json"}, bombs[enc])
    manifest = f"/v2/{REPO}/manifests/v1"
    if where == "manifest":
        fake.routes[("GET", manifest)] = bomb
        code, text = 4, "Content-Encoding"
    elif where == "blob":
        victim = max((x for x in blobs if x != d), key=lambda x: len(blobs[x]))
        fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = bomb
        code, text = 4, f"blob {victim}: answer has Content-Encoding"
    elif where == "error-body":
        fake.routes[("GET", manifest)] = _answer(400, {"Content-Encoding": enc}, bombs[enc])
        code, text = 1, "400 Bad Request"
    else:
        _bearer_gate(fake)
        fake.routes[("GET", "/token")] = bomb
        code, text = 4, "token request"
    _refused(tmp_path, fake, code, text)


def test_bomb_in_a_redirect_body_is_never_read(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]], bombs: dict[str, bytes]
) -> None:
    """httpx reads (and decodes) every redirect's body in full: we follow redirects ourselves."""
    fake, d, _, blobs = served
    victim = max((x for x in blobs if x != d), key=lambda x: len(blobs[x]))
    fake.routes[("GET", f"/storage/{victim}")] = (200, {}, blobs[victim])
    fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = _answer(
        302, {"Location": f"/storage/{victim}", "Content-Encoding": "gzip, gzip"}, bombs["gzip, gzip"]
    )
    rc, err, rss, _ = _pull(tmp_path, fake)
    print(f"peak RSS {rss:.0f} MiB")
    assert rss < MAX_RSS_MIB, f"peak RSS {rss:.0f} MiB"
    assert rc == 0, err
    assert any(p == f"/storage/{victim}" for _, p, _ in fake.requests)


def test_accept_encoding_is_identity(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    fake, _, _, _ = served
    rc, err, _, _ = _pull(tmp_path, fake)
    assert rc == 0, err
    assert fake.requests and all(h.get("Accept-Encoding") == "identity" for _, _, h in fake.requests)


def test_oversized_manifest(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    """5 MiB of OCI manifest, sent without a length: over the 4 MiB registries keep to."""
    fake, _, oci, _ = served
    doc = json.loads(oci)
    doc["annotations"] = {"pad": "x" * (5 << 20)}

    def chunked(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            h.wfile.write(json.dumps(doc).encode())
        except OSError:
            pass
        h.close_connection = True

    fake.routes[("GET", f"/v2/{REPO}/manifests/v1")] = chunked
    _refused(tmp_path, fake, 4, "exceeds 4194304 bytes")


def test_manifest_parse_bomb(tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]) -> None:
    """A continuity manifest of 3M empty entries (6 MB, its digest right) would take ~570 MB to parse."""
    fake, _, _, _ = served
    data = b"\x0a\x00" * (3 << 20)
    md = hash_bytes(data)
    oci = build_oci_manifest(md, len(data), [])
    fake.serve_artifact(REPO, "v1", oci, {md: data})
    _refused(tmp_path, fake, 4, "entries (limit)")


def test_parse_cost_counts_fields_inside_entries(tmp_path: Path) -> None:
    """One entry with 1M empty xattrs (2 MB) is 1M fields; a real manifest is counted by its entries."""
    inner = b"\x0a\x02/a" + b"\x62\x00" * (1 << 20)
    n, length = len(inner), bytearray()
    while n > 0x7F:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    data = b"\x0a" + bytes(length) + bytes([n]) + inner
    with pytest.raises(IntegrityError, match="fields"):
        check_parse_cost(data, source="x", max_fields=1 << 19)
    assert check_parse_cost(data, source="x") == 1
    for bad in (data[:-1], b"\x0b\x00", b"\x0a\x80"):
        with pytest.raises(CorruptManifest):
            check_parse_cost(bad, source="x")
    src = tmp_path / "src"
    basic(src)
    d = _cli(["ingest", str(src)], tmp_path / "a").stdout.decode().strip()
    s = Store.open(str(tmp_path / "a"))
    assert check_parse_cost(s.read_blob(d), source="x") == len(s.load_manifest(d).resources)


@pytest.mark.parametrize("where", ["blob", "error-body", "token"])
def test_lying_content_length(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]], where: str
) -> None:
    """A Content-Length of 10 GB and a body that does not end: read within budget, then dropped."""
    fake, d, _, blobs = served

    def endless(status: int) -> Callable[[BaseHTTPRequestHandler], None]:
        def serve(h: BaseHTTPRequestHandler) -> None:
            h.send_response(status)
            h.send_header("Content-Length", str(10 << 30))
            h.end_headers()
            try:
                for _ in range(1024):  # at most 64 MiB from this side: the client must stop long before
                    h.wfile.write(b"x" * (1 << 16))
            except OSError:
                pass
            h.close_connection = True

        return serve

    if where == "blob":
        victim = max((x for x in blobs if x != d), key=lambda x: len(blobs[x]))
        fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = endless(200)
        code, text = 4, f"blob {victim} has size 10737418240"
    elif where == "error-body":
        fake.routes[("GET", f"/v2/{REPO}/manifests/v1")] = endless(400)
        code, text = 1, "400 Bad Request"
    else:
        _bearer_gate(fake)
        fake.routes[("GET", "/token")] = endless(200)
        code, text = 1, "answer over 1048576 bytes"
    _, took = _refused(tmp_path, fake, code, text)
    assert took < 60


def test_trickling_token_answer_is_cut_off(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    fake, _, _, _ = served
    _bearer_gate(fake)

    def trickle(h: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"token": TOKEN, "pad": " " * 1200}).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for i in range(len(body)):  # a byte every 0.1 s: never idle for a whole timeout; 2 min in all
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass

    fake.routes[("GET", "/token")] = trickle
    _, took = _refused(tmp_path, fake, 1, "too slow", env={"CONTINUITY_REGISTRY_TIMEOUT": "0.5"})
    assert took < 60  # 1 MiB at 64 KiB/s after 2 x 0.5 s: 17 s


def test_redirect_keeps_credentials_home(
    tmp_path: Path, served: tuple[FakeRegistry, str, bytes, dict[str, bytes]]
) -> None:
    """A blob redirected to another origin is fetched without the registry's Authorization; a 401
    from that origin is not answered with the credentials."""
    fake, d, _, blobs = served
    victim = max((x for x in blobs if x != d), key=lambda x: len(blobs[x]))
    storage = FakeRegistry()
    try:
        storage.routes[("GET", f"/s/{victim}")] = (200, {}, blobs[victim])
        fake.routes[("GET", f"/v2/{REPO}/blobs/{victim}")] = (
            307,
            {"Location": f"http://{storage.host}/s/{victim}"},
            b"",
        )
        basic_auth = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        inner = dict(fake.routes)
        for key, route in inner.items():

            def serve(h: BaseHTTPRequestHandler, route: object = route) -> None:
                if h.headers.get("Authorization") != basic_auth:
                    _answer(401, {"WWW-Authenticate": 'Basic realm="fake"'}, b"")(h)
                else:
                    _answer(*route)(h)  # type: ignore[misc]

            fake.routes[key] = serve
        env = {"CONTINUITY_REGISTRY_USERNAME": "alice", "CONTINUITY_REGISTRY_PASSWORD": "s3cret"}
        rc, err, _, _ = _pull(tmp_path, fake, env)
        assert rc == 0, err
        assert storage.requests and not any("Authorization" in h for _, _, h in storage.requests)

        storage.routes[("GET", f"/s/{victim}")] = _answer(401, {"WWW-Authenticate": 'Basic realm="evil"'}, b"")
        storage.requests.clear()
        (tmp_path / "again").mkdir()
        rc, err, _, _ = _pull(tmp_path / "again", fake, env)
        assert rc == 1 and "401" in err and err.count("\n") == 1, err
        assert storage.requests and not any("Authorization" in h for _, _, h in storage.requests)
    finally:
        storage.close()


def test_push_refuses_what_pull_would(tmp_path: Path) -> None:
    """40,000 distinct blobs made an OCI manifest over 4 MiB when each was a layer; in packs they fit, and
    push checks the local blobs before any request (port 1 is never contacted: that would be exit 1)."""
    rs: list[Resource] = [
        RegularFile(
            paths=(f"/f{i}",),
            perm=0o644,
            uid=0,
            gid=0,
            xattrs=(),
            mtime_ns=None,
            ads=(),
            size=1,
            digest=f"sha256:{i:064x}",
            chunks=(),
            holes=(),
        )
        for i in range(40000)
    ]
    path = tmp_path / "big.pb"
    path.write_bytes(codec.dumps(Manifest.of(rs)))
    subprocess.run([sys.executable, "-m", "castore", "--store", str(tmp_path / "s"), "init"], check=True, timeout=300)
    p = subprocess.run(
        [sys.executable, "-m", "castore", "--store", str(tmp_path / "s"), "push", str(path), "127.0.0.1:1/big/tree:v1"],
        capture_output=True,
        timeout=300,
    )
    err = p.stderr.decode()
    assert p.returncode == 4 and "not found in store" in err and err.count("\n") == 1, err


def test_manifest_file_parse_bomb(tmp_path: Path) -> None:
    """The same parse bomb given as a manifest file: refused before protobuf allocates."""
    path = tmp_path / "bomb.pb"
    path.write_bytes(b"\x0a\x00" * (3 << 20))
    rss = tmp_path / "rss"
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            _MEASURE,
            str(rss),
            sys.executable,
            "-m",
            "castore",
            "--store",
            str(tmp_path / "s"),
            "ls",
            str(path),
        ],
        capture_output=True,
        timeout=300,
    )
    err = p.stderr.decode()
    assert int(rss.read_text()) / 1024 < MAX_RSS_MIB
    assert p.returncode == 4 and "entries (limit)" in err and err.count("\n") == 1, err
