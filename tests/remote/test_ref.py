"""Registry references and the OCI mapping's pure parts (no network)."""

from __future__ import annotations

import json

import pytest

from castore.errors import IntegrityError, UnsafeInput
from castore.remote.oci import (
    MANIFEST_MEDIA_TYPE,
    Descriptor,
    build_oci_manifest,
    check_layers,
    parse_oci_manifest,
)
from castore.remote.ref import parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("localhost:5000/a/b", ("http", "localhost:5000", "a/b", "latest", "")),
        ("127.0.0.1:5000/a:v1.2", ("http", "127.0.0.1:5000", "a", "v1.2", "")),
        ("[::1]:5000/a", ("http", "[::1]:5000", "a", "latest", "")),
        ("ghcr.io/org/tree:x", ("https", "ghcr.io", "org/tree", "x", "")),
        ("http://reg.lan:8080/t", ("http", "reg.lan:8080", "t", "latest", "")),
        ("https://localhost:5000/t", ("https", "localhost:5000", "t", "latest", "")),
        (f"reg.example/a_b/c-d__e@{D}", ("https", "reg.example", "a_b/c-d__e", "latest", D)),
    ],
)
def test_parse(text: str, want: tuple[str, str, str, str, str]) -> None:
    r = parse_reference(text)
    assert (r.scheme, r.registry, r.repo, r.tag, r.digest) == want


def test_insecure_flag() -> None:
    assert parse_reference("reg.lan/t", insecure=True).scheme == "http"
    assert parse_reference("https://reg.lan/t", insecure=True).scheme == "https"  # an explicit prefix wins


@pytest.mark.parametrize(
    "text",
    [
        "noslash",
        "reg/",
        "/repo",
        "reg/UPPER",
        "reg/a//b",
        "reg/a/../b",
        "reg/a:",
        "reg/a:-x",
        "reg/a@sha256:xyz",
        "reg/a@md5:" + "0" * 32,
        "re g/a",
        "reg:99999999/a",
        "reg/a:" + "t" * 129,
        "reg/a/",
        "reg/.a",
        "ftp://reg/a",
        "reg/a\n",
        "reg/a:b:c",
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(UnsafeInput):
        parse_reference(text)


def test_push_refuses_digest() -> None:
    with pytest.raises(UnsafeInput, match="push takes a tag"):
        parse_reference(f"reg.example/a@{D}", allow_digest=False)


def test_oci_roundtrip_and_layers() -> None:
    blobs = [("sha256:" + "1" * 64, 5), ("sha256:" + "2" * 64, 0)]
    first, rest = parse_oci_manifest(build_oci_manifest(D, 77, blobs), source="t")
    assert first == Descriptor(MANIFEST_MEDIA_TYPE, D, 77)
    assert [(b.digest, b.size) for b in rest] == blobs
    refs = {d for d, _ in blobs}
    assert check_layers(refs, {blobs[0][0]: 5}, rest, source="t") == dict(blobs)
    with pytest.raises(IntegrityError, match="the manifest says"):
        check_layers(refs, {blobs[0][0]: 6}, rest, source="t")
    with pytest.raises(IntegrityError, match="not a layer"):
        check_layers(refs | {D}, {}, rest, source="t")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("layers"),
        lambda d: d.update(schemaVersion=1),
        lambda d: d.update(layers=[]),
        lambda d: d["layers"][0].update(size=-1),
        lambda d: d["layers"][0].update(size=True),
        lambda d: d["layers"][0].update(size=0),
        lambda d: d["layers"][0].update(digest="sha256:ABC"),
        lambda d: d["layers"][1].update(digest="sha512:" + "0" * 128),
        lambda d: d["layers"].__setitem__(1, "x"),
        lambda d: d.update(artifactType=None),
    ],
)
def test_oci_parse_refuses(mutate: object) -> None:
    doc = json.loads(build_oci_manifest(D, 77, [("sha256:" + "1" * 64, 5)]))
    mutate(doc)  # type: ignore[operator]
    with pytest.raises(IntegrityError):
        parse_oci_manifest(json.dumps(doc).encode(), source="t")


@pytest.mark.parametrize("text", ["alpine:3", "library/alpine", "team/app:1"])
def test_reference_names_its_registry(text: str) -> None:
    with pytest.raises(UnsafeInput, match=r"REGISTRY/REPO\[:TAG\|@DIGEST\]"):
        parse_reference(text)


def test_docker_hub_names() -> None:
    r = parse_reference("docker.io/alpine:3")
    assert (r.registry, r.repo, r.base) == (
        "docker.io",
        "library/alpine",
        "https://registry-1.docker.io/v2/library/alpine",
    )
