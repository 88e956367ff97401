"""mount: serve a manifest read-only over FUSE, from the store, verified on read."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from castore.cli.common import Ctx, main_group, resolve
from castore.cli.trust import check_trust
from castore.errors import NotFound, UnsafeInput
from castore.textsafe import safe_line

if TYPE_CHECKING:
    from castore.remote.ref import Reference


@main_group.command("mount")
@click.argument("manifest")
@click.argument("mountpoint")
@click.option("--allow-other", is_flag=True,
              help="Let other users see the mount (FUSE allow_other; non-root needs user_allow_other "
                   "in /etc/fuse.conf).")
@click.option("-f", "--foreground", is_flag=True,
              help="Stay in the foreground until unmounted (the default; accepted for borg/sshfs habits).")
@click.pass_obj
def mount_cmd(obj: Ctx, manifest: str, mountpoint: str, allow_other: bool, foreground: bool) -> None:
    """Mount MANIFEST read-only at MOUNTPOINT (an existing empty directory) until unmounted.

    MANIFEST may also be REGISTRY/REPO[:TAG|@DIGEST] (when no local name matches): the tree is
    mounted lazily, each blob fetched (a range request, verified) on first read and kept in the store.

    Options: ro,nosuid,nodev,default_permissions. Every blob is verified the
    first time it is read; a corrupt one reads as EIO. The mount holds a
    lease, so gc keeps its blobs. Unmount with `fusermount3 -u MOUNTPOINT`,
    Ctrl-C or SIGTERM.
    """
    from castore.mount.fuse import check_mountpoint, mount

    check_mountpoint(mountpoint)  # before touching the store: a bad mount point is exit 3, nothing else done
    try:
        m, digest, _ = resolve(obj, manifest, need_store=True)
    except NotFound:
        ref = _registry_reference(manifest)
        if ref is None:
            raise
        _mount_remote(obj, ref, mountpoint, allow_other)
        return
    store = obj.store()
    check_trust(obj, manifest, digest, store)

    def ready(path: str) -> None:
        click.echo(safe_line(f"continuity: mounted {digest or manifest} at {path} (read-only); "
                             f"unmount with: fusermount3 -u {path}"), err=True)

    from castore.materialize import count_ads, note_ads
    from castore.textsafe import note

    note_ads(count_ads(m.resources), note)  # the mount has no place for them either
    mount(store, m, digest, mountpoint, allow_other=allow_other, ready=ready)


def _registry_reference(text: str) -> Reference | None:
    """``text`` as REGISTRY/REPO[:TAG|@DIGEST], or None when it is not one."""
    from castore.remote.ref import parse_reference

    if "/" not in text:
        return None
    try:
        return parse_reference(text, allow_digest=True)
    except UnsafeInput:
        return None


def _mount_remote(obj: Ctx, ref: Reference, mountpoint: str, allow_other: bool) -> None:
    """Mount a registry tree lazily (castore.remote.lazy): listing and stat need no blob fetch."""
    from castore.mount.fuse import mount
    from castore.remote.lazy import RemoteTree

    store = obj.store()
    with RemoteTree(store, ref, username=os.environ.get("CONTINUITY_REGISTRY_USERNAME"),
                    password=os.environ.get("CONTINUITY_REGISTRY_PASSWORD")) as tree:
        check_trust(obj, str(ref), tree.digest, store)

        def ready(path: str) -> None:
            click.echo(safe_line(f"continuity: mounted {ref} ({tree.digest}) at {path} (read-only, fetched "
                                 f"on first read); unmount with: fusermount3 -u {path}"), err=True)

        mount(store, tree.manifest, None, mountpoint, allow_other=allow_other, ready=ready, fetch=tree.fetch)
