"""Options every registry verb shares (push, pull, login): credentials and TLS, as skopeo and podman spell them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from castore.errors import UnsafeInput
from castore.remote.ref import Reference, is_loopback, parse_reference

F = TypeVar("F", bound=Callable[..., Any])


def access_options(fn: F) -> F:
    """--creds, --authfile, --cert-dir, --tls-verify (applied bottom-up, so listed in reverse)."""
    fn = click.option(
        "--tls-verify",
        type=click.BOOL,
        default=None,
        metavar="BOOL",
        help="Check the registry's TLS certificate (default true; --tls-verify=false only when "
        "you must). Also selects https for a loopback registry.",
    )(fn)
    fn = click.option(
        "--cert-dir",
        type=click.Path(file_okay=False),
        default=None,
        metavar="DIR",
        help="CA certificates (*.crt) and client certificate (*.cert + *.key) for the registry "
        "(default /etc/containers/certs.d/HOST:PORT/).",
    )(fn)
    fn = click.option(
        "--authfile",
        type=click.Path(dir_okay=False),
        default=None,
        metavar="FILE",
        help="Credentials file (default $REGISTRY_AUTH_FILE, podman's auth.json, ~/.docker/config.json).",
    )(fn)
    fn = click.option(
        "--creds",
        default=None,
        metavar="USER[:PASSWORD]",
        help="Credentials for the registry (the password is asked for when left out).",
    )(fn)
    return fn


def _password(password_stdin: bool) -> str | None:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return os.environ.get("CONTINUITY_REGISTRY_PASSWORD")


def make_access(
    *,
    creds: str | None,
    authfile: str | None,
    cert_dir: str | None,
    tls_verify: bool | None,
    username: str | None = None,
    password_stdin: bool = False,
) -> Any:
    """The ``castore.remote.client.Access`` for these options (httpx is imported here, by registry verbs only)."""
    from castore.remote.auth import parse_creds
    from castore.remote.client import Access
    from castore.remote.tls import TlsOptions

    password: str | None = None
    if creds is not None:
        try:
            username, password = parse_creds(creds)
        except UnsafeInput as exc:
            raise click.BadParameter(str(exc), param_hint="--creds") from None
        if password is None:
            password = _password(password_stdin) if password_stdin else ask_password(username)
    elif username:
        password = _password(password_stdin)
    return Access(
        username=username or None,
        password=password,
        authfile=authfile,
        tls=TlsOptions(verify=tls_verify is not False, cert_dir=cert_dir),
    )


def ask_password(username: str) -> str:
    if not sys.stdin.isatty():
        raise click.UsageError(f"no password for {username!r}: give --creds USER:PASSWORD or --password-stdin")
    return str(click.prompt(f"Password for {username}", hide_input=True, err=True))


def registry_reference(
    text: str, insecure: bool, *, allow_digest: bool, tls_asked: bool = False, access: Any = None
) -> Reference:
    """A registry reference, or click's usage error (exit 2).

    A loopback registry is reached over plain http (as docker does) unless the reference says
    https://, or TLS was asked for: --tls-verify given, --cert-dir, or a certs.d directory for it.
    """
    try:
        ref = parse_reference(text, insecure=insecure, allow_digest=allow_digest)
    except UnsafeInput as exc:
        raise click.BadParameter(str(exc), param_hint="REFERENCE") from None
    if ref.scheme == "http" and not insecure and not text.startswith("http://") and is_loopback(ref.registry):
        from castore.remote.tls import has_cert_dir

        if tls_asked or (access is not None and has_cert_dir(ref.registry, access.tls)):
            ref = Reference(ref.registry, ref.repo, ref.tag, ref.digest, "https")
    return ref
