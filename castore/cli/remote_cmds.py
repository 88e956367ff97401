"""Registry verbs: push, pull (OCI Distribution; see docs/remote.md)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from castore.cli.common import Ctx, F, complete_names, json_opt, main_group, print_json, resolve_lazy
from castore.cli.registry_opts import access_options, make_access, registry_reference
from castore.errors import UnsafeInput
from castore.remote.ref import Reference, parse_reference

if TYPE_CHECKING:
    from castore.remote.image import Platform
    from castore.sign.policy import Policy

insecure_opt = click.option(
    "--insecure", is_flag=True, help="Plain http (also: an http:// prefix; loopback registries default to it)."
)
jobs_opt = click.option(
    "--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True, help="Blob transfers in parallel."
)
user_opt = click.option(
    "--username",
    envvar="CONTINUITY_REGISTRY_USERNAME",
    metavar="USER",
    help="Registry user (env CONTINUITY_REGISTRY_USERNAME); password from "
    "CONTINUITY_REGISTRY_PASSWORD or --password-stdin.",
)
pw_opt = click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")


def _password(password_stdin: bool) -> str | None:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return os.environ.get("CONTINUITY_REGISTRY_PASSWORD")


def remote_options(fn: F) -> F:
    """The options push and pull share: --insecure, --jobs, --username, --password-stdin, --json."""
    for opt in (json_opt, pw_opt, user_opt, jobs_opt, insecure_opt):
        fn = opt(fn)
    return fn


@main_group.command("push")
@click.argument("manifest", shell_complete=complete_names)
@click.argument("reference", metavar="REGISTRY/REPO[:TAG]")
@click.option(
    "--base",
    "bases",
    multiple=True,
    metavar="REF",
    help="Another artifact of the same repository (TAG, @DIGEST or full reference) whose packs "
    "may be reused; the tag being overwritten always is. Repeatable.",
)
@click.option(
    "--pack-size",
    type=click.IntRange(64 << 10, 1 << 30),
    default=None,
    metavar="BYTES",
    help="Target size of new packs (default 32 MiB; larger when a tree would need over 4096 packs).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tree", "image"]),
    default="tree",
    show_default=True,
    help="tree: the continuity artifact (pull gets it back exactly); image: a one-layer OCI image "
    "(export's tar) that podman, skopeo and docker run.",
)
@click.option(
    "--layer-compression",
    type=click.Choice(["gzip", "none"]),
    default="gzip",
    show_default=True,
    help="With --format image: the layer's compression.",
)
@remote_options
@access_options
@click.pass_obj
def push_cmd(
    obj: Ctx,
    manifest: str,
    reference: str,
    bases: tuple[str, ...],
    pack_size: int | None,
    fmt: str,
    layer_compression: str,
    insecure: bool,
    jobs: int,
    username: str | None,
    password_stdin: bool,
    as_json: bool,
    creds: str | None,
    authfile: str | None,
    cert_dir: str | None,
    tls_verify: bool | None,
) -> None:
    """Copy MANIFEST and every blob it references to a registry; print REGISTRY/REPO@DIGEST.

    \b
    Examples:
      continuity push web registry.example.com/team/web:2026-12-07
      continuity push web localhost:5000/web --json
    """
    from castore.remote.packer import PACK_TARGET
    from castore.remote.push import push  # httpx is imported only by the verbs that need it

    access = make_access(
        creds=creds,
        authfile=authfile,
        cert_dir=cert_dir,
        tls_verify=tls_verify,
        username=username,
        password_stdin=password_stdin,
    )
    ref = registry_reference(reference, insecure, allow_digest=False, tls_asked=tls_verify is not None, access=access)
    base_refs = [_base_reference(ref, b, insecure) for b in bases]
    m, digest, store = resolve_lazy(obj, manifest, need_store=True)  # a stored manifest: read by push
    assert store is not None
    if fmt == "image":
        from castore.remote.image_push import push_image

        if m is None:
            assert digest is not None
            m = store.load_manifest(digest)

        img = push_image(
            store, m, ref, manifest_digest=digest, compress=layer_compression == "gzip", jobs=jobs, access=access
        )
        pinned = f"{ref.registry}/{ref.repo}@{img.oci_digest}"
        if as_json:
            print_json(
                {
                    "reference": pinned,
                    "tag": str(ref),
                    "oci_digest": img.oci_digest,
                    "digest": digest,
                    "layer": img.layer_digest,
                    "diff_id": img.diff_id,
                    "uploaded": img.uploaded,
                    "uploaded_size": img.uploaded_bytes,
                }
            )
        else:
            click.echo(pinned)
        return
    res = push(
        store,
        m,
        ref,
        manifest_digest=digest,
        jobs=jobs,
        bases=base_refs,
        pack_target=pack_size or PACK_TARGET,
        access=access,
    )
    pinned = f"{ref.registry}/{ref.repo}@{res.oci_digest}"
    if as_json:
        print_json(
            {
                "reference": pinned,
                "tag": str(ref),
                "oci_digest": res.oci_digest,
                "digest": res.manifest_digest,
                "uploaded": res.uploaded,
                "skipped": res.skipped,
                "uploaded_size": res.uploaded_bytes,
                "signatures": res.signatures,
                "packs_new": res.packs_new,
                "packs_reused": res.packs_reused,
                "oci_manifest_size": res.oci_manifest_size,
                "manifest_parts": res.manifest_parts,
            }
        )
    else:
        click.echo(pinned)


def _base_reference(ref: Reference, text: str, insecure: bool) -> Reference:
    """``--base``: a tag (``v1``) or digest (``@sha256:…``, ``sha256:…``) of ``ref``'s repository, or a full one."""
    if "/" not in text:
        sep = "" if text.startswith("@") else "@" if text.startswith("sha256:") else ":"
        text = f"{ref.registry}/{ref.repo}{sep}{text}"
        if ref.base.startswith("http://"):
            insecure = True
    return parse_reference_or_usage(text, insecure, allow_digest=True)


@main_group.command("pull")
@click.argument("reference", metavar="REGISTRY/REPO[:TAG|@DIGEST]|oci:DIR[:TAG]")
@click.option("--name", help="Catalog name (default: the reference without its scheme).")
@click.option(
    "--platform",
    default=None,
    metavar="OS/ARCH[/VARIANT]",
    help="The image to take from an image index (default: the host's).",
)
@click.option(
    "--checkout",
    "checkout_dir",
    type=click.Path(),
    default=None,
    metavar="DIR",
    help="Then materialise the tree at DIR (absent or empty), as `checkout` does, in the same process: "
    "the blobs this pull verified are not hashed again.",
)
@remote_options
@access_options
@click.pass_obj
def pull_cmd(
    obj: Ctx,
    reference: str,
    name: str | None,
    platform: str | None,
    checkout_dir: str | None,
    insecure: bool,
    jobs: int,
    username: str | None,
    password_stdin: bool,
    as_json: bool,
    creds: str | None,
    authfile: str | None,
    cert_dir: str | None,
    tls_verify: bool | None,
) -> None:
    """Copy a tree or a container image (flattened) from a registry or an OCI layout into the store;
    print its manifest digest.

    \b
    Examples:
      continuity pull registry.example.com/team/web:2026-12-07 --name web
      continuity pull localhost:5000/web@sha256:3f2a... --json
      continuity pull localhost:5000/web:v2 --checkout /srv/web-v2
    """
    from castore.sign.policy import load_policy

    plat = None
    if platform:  # the image module (tar importer, ingest) only when an image is asked for: 0.3-0.6 s of imports
        from castore.remote.image import parse_platform

        plat = parse_platform(platform)
    loaded = load_policy(obj.policy_path)
    policy = None if loaded.accepts_all else loaded
    if reference.startswith("oci:"):
        _pull_layout(obj, reference, name, plat, policy, jobs, as_json, checkout_dir)
        return
    from castore.remote.pull import pull

    access = make_access(
        creds=creds,
        authfile=authfile,
        cert_dir=cert_dir,
        tls_verify=tls_verify,
        username=username,
        password_stdin=password_stdin,
    )
    ref = registry_reference(reference, insecure, allow_digest=True, tls_asked=tls_verify is not None, access=access)
    res = pull(
        obj.store(create=True),
        ref,
        name=name if name is not None else str(ref),
        jobs=jobs,
        access=access,
        platform=plat,
        policy=policy,
    )
    if checkout_dir is not None:
        from castore.remote.pull_checkout import checkout_pulled

        checkout_pulled(obj.store(), res, checkout_dir)
    if as_json:
        print_json(
            {
                "digest": res.manifest_digest,
                "oci_digest": res.oci_digest,
                "name": name or str(ref),
                "downloaded": res.downloaded,
                "present": res.present,
                "downloaded_size": res.downloaded_bytes,
                "signatures": res.signatures,
                "resumed": res.resumed,
            }
        )
    else:
        click.echo(res.manifest_digest)


def _pull_layout(
    obj: Ctx,
    reference: str,
    name: str | None,
    plat: Platform | None,
    policy: Policy | None,
    jobs: int,
    as_json: bool,
    checkout_dir: str | None,
) -> None:
    """``pull oci:DIR[:TAG]``: an image from an OCI layout, flattened."""
    from castore.remote.image import pull_image
    from castore.remote.ocilayout import Layout, parse_layout_ref

    path, tag = parse_layout_ref(reference)
    layout = Layout(path)
    label = name if name is not None else reference
    if policy is not None:  # images carry no continuity signatures: only an accepting scope takes them
        from castore.store.signatures import enforce

        enforce(None, policy, None, [label], what=reference)
    md, oci_digest, n, nbytes = pull_image(
        obj.store(create=True), layout, layout.top(tag), reference, name=label, jobs=jobs, platform=plat
    )
    if checkout_dir is not None:
        from castore.remote.pull import PullResult
        from castore.remote.pull_checkout import checkout_pulled

        checkout_pulled(obj.store(), PullResult(md, oci_digest, n, 0, nbytes), checkout_dir)
    if as_json:
        print_json(
            {
                "digest": md,
                "oci_digest": oci_digest,
                "name": label,
                "downloaded": n,
                "present": 0,
                "downloaded_size": nbytes,
            }
        )
    else:
        click.echo(md)


def parse_reference_or_usage(text: str, insecure: bool, *, allow_digest: bool) -> Reference:
    """A registry reference, or click's usage error (exit 2)."""
    try:
        return parse_reference(text, insecure=insecure, allow_digest=allow_digest)
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc), param_hint="REFERENCE") from None
