"""login / logout: keep registry credentials where podman keeps them (see castore.remote.auth)."""

from __future__ import annotations

import sys

import click

from castore.cli.common import handle_errors, main_group
from castore.cli.registry_opts import ask_password, make_access, registry_reference


def _registry(text: str) -> str:
    """``REGISTRY`` as login takes it: a host[:port], with an optional scheme and /v2/ path dropped."""
    for prefix in ("https://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text.rstrip("/").removesuffix("/v2").removesuffix("/v1")


@main_group.command("login")
@click.argument("registry", metavar="REGISTRY")
@click.option("-u", "--username", default=None, metavar="USER", help="Registry user (asked for when left out).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.option("--creds", default=None, metavar="USER[:PASSWORD]", help="User and password in one (as skopeo).")
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="Where to store them (default $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json).",
)
@click.option(
    "--cert-dir",
    type=click.Path(file_okay=False),
    default=None,
    metavar="DIR",
    help="CA and client certificates for the registry (as push/pull).",
)
@click.option("--tls-verify", type=click.BOOL, default=None, metavar="BOOL", help="Check the TLS certificate.")
@click.option("--insecure", is_flag=True, help="Plain http.")
@handle_errors
def login_cmd(
    registry: str,
    username: str | None,
    password_stdin: bool,
    creds: str | None,
    authfile: str | None,
    cert_dir: str | None,
    tls_verify: bool | None,
    insecure: bool,
) -> None:
    """Check USER's password against REGISTRY (GET /v2/), then store it for push and pull."""
    from castore.remote.auth import store_login
    from castore.remote.client import Access, Registry

    host = _registry(registry)
    if creds is None:
        if not username:
            if not sys.stdin.isatty() or password_stdin:
                raise click.UsageError("login needs a user: -u USER (or --creds USER[:PASSWORD])")
            username = str(click.prompt("Username", err=True))
        if password_stdin:
            creds = f"{username}:{sys.stdin.readline().rstrip(chr(13) + chr(10))}"
        else:
            creds = f"{username}:{ask_password(username)}"
    access = make_access(
        creds=creds, authfile=authfile, cert_dir=cert_dir, tls_verify=tls_verify, password_stdin=password_stdin
    )
    scheme = "http://" if registry.startswith("http://") else "https://" if registry.startswith("https://") else ""
    ref = registry_reference(
        f"{scheme}{host}/x", insecure, allow_digest=False, tls_asked=tls_verify is not None, access=access
    )
    from castore.remote.ref import Reference

    probe = Reference(ref.registry, "", scheme=ref.scheme)
    with Registry(probe, access=Access(access.username, access.password, stored=False, tls=access.tls)) as reg:
        reg.ping()
    path = store_login(host, access.username, access.password or "", authfile=authfile)
    click.echo(f"Login Succeeded (credentials in {path})", err=True)


@main_group.command("logout")
@click.argument("registry", metavar="REGISTRY")
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="FILE",
    help="The credentials file (default as login).",
)
@handle_errors
def logout_cmd(registry: str, authfile: str | None) -> None:
    """Forget the stored credentials of REGISTRY."""
    from castore.errors import NotFound
    from castore.remote.auth import auth_file_for_write, remove_login

    host = _registry(registry)
    if not remove_login(host, authfile=authfile):
        raise NotFound(f"not logged in to {host} (in {auth_file_for_write(authfile)})")
    click.echo(f"Removed login credentials for {host}", err=True)
