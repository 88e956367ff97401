"""Ordinary container images: built with umoci, copied with skopeo, pulled and flattened by continuity,
checked against umoci's own extraction (owners, modes, xattrs, whiteouts and opaque directories applied);
oci: layouts, image indexes with --platform, push --format image read back by skopeo and umoci."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from castore.testing.images import build_layout, raw_layer, umoci, unpack
from tests.helpers import ROOT, have, run_cli

pytestmark = [
    pytest.mark.skipif(not (have("umoci") and have("skopeo")), reason="needs umoci and skopeo"),
    pytest.mark.skipif(not ROOT, reason="umoci keeps owners only as root"),
]


def _layer1(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/hello").write_text("hello\n")
    os.setxattr(root / "etc/hello", "user.foo", b"bar")
    (root / "gone/sub").mkdir(parents=True)
    (root / "gone/sub/f").write_text("x")
    (root / "keep").mkdir()
    (root / "keep/a").write_text("a")
    (root / "opq").mkdir()
    (root / "opq/old1").write_text("1")
    (root / "opq/old2").write_text("2")
    (root / "modes").mkdir(mode=0o750)
    (root / "modes/suid").write_text("#!/bin/sh\n")
    os.chmod(root / "modes/suid", 0o4755)
    (root / "own").write_text("owned")
    os.chown(root / "own", 1234, 5678)
    os.symlink("etc/hello", root / "lnk")
    (root / "big.bin").write_bytes(hashlib.sha256(b"seed").digest() * 20000)


def _layer2(root: Path) -> None:
    shutil.rmtree(root / "gone")
    (root / "etc/hello").write_text("two\n")
    os.link(root / "etc/hello", root / "etc/hl")
    os.link(root / "etc/hello", root / "etc/hl2")
    shutil.rmtree(root / "keep")
    (root / "keep").write_text("now a file")


LAYER3 = raw_layer(
    [
        ("dir", "opq", ""),
        ("file", "opq/.wh..wh..opq", b""),
        ("file", "opq/new", b"new\n"),
        ("file", "etc/.wh.hl2", b""),
        ("file", "added", b"third layer\n"),
    ]
)


@pytest.fixture(scope="session")
def image_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(an OCI layout with tag ``t``: 3 layers, and umoci's rootfs of it)."""
    if not (have("umoci") and ROOT):
        pytest.skip("needs umoci, as root")
    work = tmp_path_factory.mktemp("image")
    layout = work / "layout"
    build_layout(layout, "t", [_layer1, _layer2, LAYER3], work=work)
    return layout, unpack(layout, "t", work / "ref")


def test_layout_pull_matches_umoci(tmp_path: Path, image_layout: tuple[Path, Path]) -> None:
    layout, rootfs = image_layout
    st = tmp_path / "st"
    p = run_cli("pull", f"oci:{layout}:t", "--name", "img", "--json", store=st, check=True)
    out = json.loads(p.stdout)
    assert out["downloaded"] == 3 and out["name"] == "img"
    run_cli("verify", rootfs, "img", store=st, check=True)
    ls = run_cli("ls", "img", store=st, check=True).stdout.decode().split()
    assert "/gone" not in ls and "/opq/old1" not in ls and "/opq/new" in ls and "/etc/hl2" not in ls
    assert "/etc/hl" in ls and "/added" in ls and "/keep/a" not in ls
    # checked out, it is the same tree umoci extracted (owners, modes, xattrs)
    co = tmp_path / "co"
    run_cli("checkout", "img", co, store=st, check=True)
    assert os.stat(co / "own").st_uid == 1234 and os.stat(co / "modes/suid").st_mode & 0o7777 == 0o4755
    assert os.getxattr(co / "etc/hello", "user.foo") == b"bar"
    assert os.stat(co / "etc/hello").st_ino == os.stat(co / "etc/hl").st_ino


def test_layout_refusals(tmp_path: Path, image_layout: tuple[Path, Path]) -> None:
    layout, _ = image_layout
    st = tmp_path / "st"
    p = run_cli("pull", f"oci:{layout}:nosuch", store=st)
    assert p.returncode == 1 and b"no image tagged 'nosuch'" in p.stderr
    p = run_cli("pull", f"oci:{tmp_path}", store=st)
    assert p.returncode == 1 and b"not an OCI image layout" in p.stderr
    # a layer whose bytes changed: exit 4, nothing recorded
    bad = tmp_path / "bad"
    shutil.copytree(layout, bad)
    idx = json.loads((bad / "index.json").read_text())
    man = json.loads((bad / "blobs/sha256" / idx["manifests"][0]["digest"][7:]).read_text())
    blob = bad / "blobs/sha256" / man["layers"][1]["digest"][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    p = run_cli("pull", f"oci:{bad}:t", "--name", "bad", store=st)
    assert p.returncode == 4 and b"digest mismatch" in p.stderr
    assert run_cli("list", store=st, check=True).stdout.strip() == b""


def _add_index(layout: Path, tag: str, entries: list[tuple[str, str]]) -> None:
    """Tag ``tag``: an image index of the images tagged ``entries[i][0]`` for platform ``entries[i][1]``."""
    idx = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in idx["manifests"]}
    items = []
    for t, plat in entries:
        os_, arch = plat.split("/")
        d = dict(by_tag[t])
        d.pop("annotations", None)
        d["platform"] = {"os": os_, "architecture": arch}
        items.append(d)
    data = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": items}
    ).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    idx["manifests"].append(
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": "sha256:" + digest,
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }
    )
    (layout / "index.json").write_text(json.dumps(idx))


def test_index_platforms(tmp_path: Path, image_layout: tuple[Path, Path]) -> None:
    layout = tmp_path / "layout"
    shutil.copytree(image_layout[0], layout)
    build_layout(layout, "small", [lambda r: (r / "arm-only").write_text("arm\n")], work=tmp_path)
    from castore.remote.image import host_platform

    host = host_platform()
    other = "arm64" if host.arch != "arm64" else "amd64"
    _add_index(layout, "multi", [("t", f"linux/{host.arch}"), ("small", f"linux/{other}")])
    st = tmp_path / "st"
    run_cli("pull", f"oci:{layout}:multi", "--name", "host", store=st, check=True)
    run_cli("verify", image_layout[1], "host", store=st, check=True)
    run_cli("pull", f"oci:{layout}:multi", "--platform", f"linux/{other}", "--name", "o", store=st, check=True)
    assert run_cli("ls", "o", store=st, check=True).stdout.split() == [b"/arm-only"]
    p = run_cli("pull", f"oci:{layout}:multi", "--platform", "linux/s390x", store=st)
    assert p.returncode == 1 and b"no image for linux/s390x" in p.stderr and f"linux/{other}".encode() in p.stderr
    p = run_cli("pull", f"oci:{layout}:multi", "--platform", "nonsense", store=st)
    assert p.returncode == 3 and b"OS/ARCH" in p.stderr


def test_registry_pull_and_dedup(tmp_path: Path, image_layout: tuple[Path, Path], registry: str) -> None:
    layout, rootfs = image_layout
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:t", f"docker://{registry}/img/base:1"],
        check=True,
        capture_output=True,
    )
    # the same base plus one layer of its own
    more = tmp_path / "more"
    shutil.copytree(layout, more)
    own = os.urandom(300_000)
    raw = tmp_path / "own.tar"
    raw.write_bytes(raw_layer([("file", "own.bin", own)]))
    umoci("raw", "add-layer", "--image", f"{more}:t", raw)
    subprocess.run(
        ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{more}:t", f"docker://{registry}/img/more:1"],
        check=True,
        capture_output=True,
    )
    st = tmp_path / "st"
    run_cli("pull", f"{registry}/img/base:1", store=st, check=True)
    run_cli("verify", rootfs, f"{registry}/img/base:1", store=st, check=True)

    def stored() -> int:
        return sum(os.stat(os.path.join(d, f)).st_size for d, _, fs in os.walk(st / "blobs") for f in fs)

    before = stored()
    run_cli("pull", f"{registry}/img/more:1", "--name", "more", store=st, check=True)
    grown = stored() - before
    assert grown <= len(own) + 4096, (grown, len(own))  # only its own layer's file, plus the manifest
    assert b"/own.bin" in run_cli("ls", "more", store=st, check=True).stdout


def test_push_image_read_by_skopeo_and_umoci(tmp_path: Path, image_layout: tuple[Path, Path], registry: str) -> None:
    _, rootfs = image_layout
    st = tmp_path / "st"
    run_cli("ingest", rootfs, "--name", "tree", store=st, check=True)
    for comp in ("gzip", "none"):
        ref = f"{registry}/pushed/img:{comp}"
        out = json.loads(
            run_cli(
                "push", "tree", ref, "--format", "image", "--layer-compression", comp, "--json", store=st, check=True
            ).stdout
        )
        info = json.loads(
            subprocess.run(
                ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], check=True, capture_output=True
            ).stdout
        )
        assert info["Digest"] == out["oci_digest"] and info["Layers"] == [out["layer"]]
        dst = tmp_path / f"copy-{comp}"
        subprocess.run(
            ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dst}:x"],
            check=True,
            capture_output=True,
        )
        back = unpack(dst, "x", tmp_path / f"b-{comp}")
        run_cli("verify", back, "tree", store=st, check=True)
        # and continuity pulls its own image back to the same tree
        got = run_cli("pull", ref, "--name", f"back-{comp}", store=st, check=True).stdout.decode().strip()
        assert run_cli("diff", "tree", got, store=st).returncode == 0
    again = json.loads(
        run_cli(
            "push", "tree", f"{registry}/pushed/img:again", "--format", "image", "--json", store=st, check=True
        ).stdout
    )
    assert again["uploaded"] == 0  # deterministic: same layer, same config, nothing sent again


def test_reference_without_registry(tmp_path: Path) -> None:
    p = run_cli("pull", "alpine:3", store=tmp_path / "st")
    assert p.returncode == 2 and b"REGISTRY/REPO[:TAG|@DIGEST]" in p.stderr


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    d = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs/sha256" / d).write_bytes(data)
    return {"digest": "sha256:" + d, "size": len(data)}


@pytest.mark.parametrize("kind", ["docker-gzip", "oci-zstd"])
def test_hand_made_layouts(tmp_path: Path, kind: str) -> None:
    """Docker schema 2 media types with a gzip layer, and an OCI zstd layer, in a layout written here."""
    import gzip

    import zstandard

    layer_tar = raw_layer([("dir", "d", ""), ("file", "d/f", b"content\n"), ("file", "top", b"t\n")])
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    if kind == "docker-gzip":
        layer = {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            **_blob(layout, gzip.compress(layer_tar, mtime=0)),
        }
        cfg_type, man_type = (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
    else:
        layer = {
            "mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
            **_blob(layout, zstandard.ZstdCompressor().compress(layer_tar)),
        }
        cfg_type, man_type = ("application/vnd.oci.image.config.v1+json", "application/vnd.oci.image.manifest.v1+json")
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
        }
    ).encode()
    man = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": man_type,
            "config": {"mediaType": cfg_type, **_blob(layout, config)},
            "layers": [layer],
        }
    ).encode()
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": man_type,
                        **_blob(layout, man),
                        "annotations": {"org.opencontainers.image.ref.name": "v"},
                    }
                ],
            }
        )
    )
    st = tmp_path / "st"
    run_cli("pull", f"oci:{layout}", "--name", "h", store=st, check=True)
    assert run_cli("ls", "h", store=st, check=True).stdout.split() == [b"/d", b"/d/f", b"/top"]
    # a config whose diff_ids do not match the layer count: exit 4, nothing recorded
    bad = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}}).encode()
    man2 = json.loads(man)
    man2["config"].update(_blob(layout, bad))
    raw = json.dumps(man2).encode()
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": man_type, **_blob(layout, raw)}]})
    )
    p = run_cli("pull", f"oci:{layout}", "--name", "bad", store=st)
    assert p.returncode == 4 and b"diff_ids" in p.stderr
    assert b"bad" not in run_cli("list", store=st, check=True).stdout
