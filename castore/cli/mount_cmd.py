"""mount: serve a manifest read-only over FUSE, from the store (verified on read), or lazily from a registry."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import click

from castore.cli.common import Ctx, complete_names, main_group, resolve
from castore.cli.trust import check_trust
from castore.errors import NotFound, UnsafeInput
from castore.remote.ref import Reference, parse_reference
from castore.store import Store
from castore.textsafe import safe_line


@main_group.command("mount")
@click.argument("manifest", metavar="MANIFEST|REGISTRY/REPO[:TAG|@DIGEST]", shell_complete=complete_names)
@click.argument("mountpoint")
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users see the mount (FUSE allow_other; non-root needs user_allow_other in /etc/fuse.conf).",
)
@click.option(
    "-f",
    "--foreground",
    is_flag=True,
    help="Stay in the foreground until unmounted (the default; accepted for borg/sshfs habits).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Registry over plain http (also: an http:// prefix; loopback registries default to it).",
)
@click.option(
    "--username",
    envvar="CONTINUITY_REGISTRY_USERNAME",
    metavar="USER",
    help="Registry user (env CONTINUITY_REGISTRY_USERNAME); password from CONTINUITY_REGISTRY_PASSWORD "
    "or --password-stdin.",
)
@click.option("--password-stdin", is_flag=True, help="Read the registry password from stdin.")
@click.pass_obj
def mount_cmd(
    obj: Ctx,
    manifest: str,
    mountpoint: str,
    allow_other: bool,
    foreground: bool,
    insecure: bool,
    username: str | None,
    password_stdin: bool,
) -> None:
    """Mount MANIFEST read-only at MOUNTPOINT (an existing empty directory) until unmounted.

    Options: ro,nosuid,nodev,default_permissions. Every blob is verified the
    first time it is read; a corrupt one reads as EIO. The mount holds a
    lease, so gc keeps its blobs. Unmount with `fusermount3 -u MOUNTPOINT`,
    Ctrl-C or SIGTERM.

    A registry reference (REGISTRY/REPO[:TAG|@DIGEST], when it is not a name
    in the catalog) is mounted lazily: listing and stat read only the
    manifests (and pack indexes); a file's blobs are fetched on first read,
    verified, and kept in the store, so later reads are local.

    \b
    Examples:
      continuity mount web /mnt/web &
      continuity mount web /mnt/web --allow-other
      fusermount3 -u /mnt/web
    """
    from castore.mount.fuse import check_mountpoint

    check_mountpoint(mountpoint)  # before touching the store: a bad mount point is exit 3, nothing else done
    first = manifest.split("/", 1)[0]  # a registry reference brings content in: its store is made if missing
    remote_like = "/" in manifest and ("." in first or ":" in first or first == "localhost")
    store = obj.store(create=remote_like and not os.path.exists(manifest))
    ref = _registry_reference(store, manifest, insecure)
    if ref is not None:
        password = (
            sys.stdin.readline().rstrip("\r\n") if password_stdin else os.environ.get("CONTINUITY_REGISTRY_PASSWORD")
        )
        _lazy_mount(obj, store, ref, mountpoint, allow_other, username, password)
        return
    from castore.mount.fuse import mount

    m, digest, _ = resolve(obj, manifest, need_store=True)
    check_trust(obj, manifest, digest, store)

    from castore.materialize import count_ads, note_ads
    from castore.textsafe import note

    note_ads(count_ads(m.resources), note)  # the mount has no place for them either
    stats = mount(store, m, digest, mountpoint, allow_other=allow_other, ready=_ready(digest or manifest))
    if obj.debug:
        note("mount: " + ", ".join(f"{k} {v}" for k, v in stats.items()), prefix="debug")


def _ready(what: str) -> Callable[[str], None]:
    def ready(path: str) -> None:
        click.echo(
            safe_line(f"continuity: mounted {what} at {path} (read-only); unmount with: fusermount3 -u {path}"),
            err=True,
        )

    return ready


def _registry_reference(store: Store, text: str, insecure: bool) -> Reference | None:
    """``text`` as a registry reference when it is not a catalog name, digest or file, and its first
    component is a registry host (has a dot or a port, or is localhost, as docker decides); else None."""
    try:
        store.resolve(text)
        return None
    except NotFound:
        pass
    if os.path.exists(text):
        return None
    bare = text.split("://", 1)[-1]
    host = bare.split("/", 1)[0]
    if "/" not in bare or not ("." in host or ":" in host or host == "localhost"):
        return None
    try:
        return parse_reference(text, insecure=insecure, allow_digest=True)
    except UnsafeInput:
        return None


def _lazy_mount(
    obj: Ctx,
    store: Store,
    ref: Reference,
    mountpoint: str,
    allow_other: bool,
    username: str | None,
    password: str | None,
) -> None:
    """Mount a remote tree whose blobs are fetched on first read (castore.remote.lazy)."""
    from castore.mount.fuse import mount
    from castore.remote.blobsource import open_remote_tree
    from castore.remote.client import Registry
    from castore.remote.lazy import LazyFetcher
    from castore.sign.policy import load_policy
    from castore.textsafe import note

    policy = load_policy(obj.policy_path)
    with Registry(ref, username=username, password=password) as reg, store.lease() as lease:
        os.makedirs(lease.tmp_dir, mode=0o700, exist_ok=True)
        tree = open_remote_tree(store, reg, ref, lease.tmp_dir, policy=None if policy.accepts_all else policy)
        fetcher = LazyFetcher(store, lease, tree.blobs, tree.kinds, tree.sequence)
        try:
            mount(
                store,
                tree.manifest,
                tree.manifest_digest,
                mountpoint,
                allow_other=allow_other,
                ready=_ready(f"{ref} ({tree.manifest_digest}, lazily)"),
                lease=lease,
                fetch=fetcher.fetch,
            )
        finally:
            fetcher.close()
            read = tree.blobs.counter.total - tree.opened_bytes
            note(
                f"lazy mount: {tree.opened_bytes} bytes at mount (manifests, pack indexes); reads fetched "
                f"{fetcher.fetched} blob(s), {read} bytes, kept in the store"
            )
