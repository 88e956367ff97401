"""mount: serve a manifest read-only over FUSE, from the store, verified on read."""

from __future__ import annotations

import click

from castore.cli.common import Ctx, handle_errors, main_group, resolve
from castore.cli.trust import check_trust
from castore.textsafe import safe_line


@main_group.command("mount")
@click.argument("manifest")
@click.argument("mountpoint")
@click.option("--allow-other", is_flag=True,
              help="Let other users see the mount (FUSE allow_other; non-root needs user_allow_other "
                   "in /etc/fuse.conf).")
@click.option("-f", "--foreground", is_flag=True,
              help="Stay in the foreground until unmounted (the default; accepted for borg/sshfs habits).")
@click.pass_obj
@handle_errors
def mount_cmd(obj: Ctx, manifest: str, mountpoint: str, allow_other: bool, foreground: bool) -> None:
    """Mount MANIFEST read-only at MOUNTPOINT (an existing empty directory) until unmounted.

    Options: ro,nosuid,nodev,default_permissions. Every blob is verified the
    first time it is read; a corrupt one reads as EIO. The mount holds a
    lease, so gc keeps its blobs. Unmount with `fusermount3 -u MOUNTPOINT`,
    Ctrl-C or SIGTERM.
    """
    from castore.mount.fuse import check_mountpoint, mount

    check_mountpoint(mountpoint)  # before touching the store: a bad mount point is exit 3, nothing else done
    m, digest, _ = resolve(obj, manifest, need_store=True)
    store = obj.store()
    check_trust(obj, manifest, digest, store)

    def ready(path: str) -> None:
        click.echo(safe_line(f"continuity: mounted {digest or manifest} at {path} (read-only); "
                             f"unmount with: fusermount3 -u {path}"), err=True)

    from castore.materialize import count_ads, note_ads
    from castore.textsafe import note

    note_ads(count_ads(m.resources), note)  # the mount has no place for them either
    mount(store, m, digest, mountpoint, allow_other=allow_other, ready=ready)
