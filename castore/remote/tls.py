"""TLS for registries as skopeo and podman set it up: system CAs, certs.d directories, client certificates.

For ``HOST[:PORT]`` the trust comes from:

- the system's CAs (OpenSSL's default paths, ``SSL_CERT_FILE``/``SSL_CERT_DIR`` honoured);
- ``--cert-dir DIR`` when given, else every ``certs.d`` root that has a ``HOST[:PORT]`` directory
  (``CONTINUITY_CERTS_D``, a ``:``-separated list; default ``/etc/containers/certs.d`` then
  ``/etc/docker/certs.d``). In such a directory, every ``*.crt`` (``ca.crt`` among them) is an
  additional CA, and ``NAME.cert`` with ``NAME.key`` a client certificate presented to the
  registry (the containers-certs.d(5) layout).

``--tls-verify=false`` turns checking off, only when asked. Failures are a one-line
``TlsSetupError`` (exit 3) naming the file.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

from castore.errors import UnsafeInput

DEFAULT_CERTS_D = ("/etc/containers/certs.d", "/etc/docker/certs.d")


class TlsSetupError(UnsafeInput):
    """A certificate directory that cannot be used (exit 3)."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """What the user asked for: ``verify`` False only with ``--tls-verify=false``; ``cert_dir`` from ``--cert-dir``."""

    verify: bool = True
    cert_dir: str | None = None


def certs_d_roots() -> list[str]:
    env = os.environ.get("CONTINUITY_CERTS_D")
    if env is not None:
        return [p for p in env.split(":") if p]
    return list(DEFAULT_CERTS_D)


def host_cert_dirs(registry: str, opts: TlsOptions) -> list[str]:
    """The certificate directories that apply to ``registry`` (``host[:port]``)."""
    if opts.cert_dir is not None:
        if not os.path.isdir(opts.cert_dir):
            raise TlsSetupError(f"--cert-dir {opts.cert_dir}: no such directory")
        return [opts.cert_dir]
    out = []
    for root in certs_d_roots():
        d = os.path.join(root, registry.replace("/", "_"))
        if os.path.isdir(d):
            out.append(d)
    return out


def has_cert_dir(registry: str, opts: TlsOptions) -> bool:
    """True when the user gave certificates for ``registry`` (then a loopback registry is reached over https)."""
    return opts.cert_dir is not None or bool(host_cert_dirs(registry, opts))


def ssl_context(registry: str, opts: TlsOptions) -> ssl.SSLContext | bool:
    """The ``verify`` argument for httpx: an SSLContext with the system CAs plus the registry's
    certs.d CAs and client certificate; False when checking was turned off."""
    if not opts.verify:
        return False
    ctx = ssl.create_default_context()
    for d in host_cert_dirs(registry, opts):
        _load_dir(ctx, d)
    return ctx


def _load_dir(ctx: ssl.SSLContext, d: str) -> None:
    try:
        names = sorted(os.listdir(d))
    except OSError as exc:
        raise TlsSetupError(f"{d}: {exc.strerror}") from None
    for name in names:
        path = os.path.join(d, name)
        if name.endswith(".crt"):
            try:
                ctx.load_verify_locations(cafile=path)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise TlsSetupError(f"{path}: not a usable CA certificate ({_reason(exc)})") from None
        elif name.endswith(".cert"):
            key = path[:-5] + ".key"
            if not os.path.exists(key):
                raise TlsSetupError(f"{path}: client certificate without its key {os.path.basename(key)}")
            try:
                ctx.load_cert_chain(certfile=path, keyfile=key)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise TlsSetupError(f"{path}: client certificate and key not usable ({_reason(exc)})") from None
        elif name.endswith(".key") and not os.path.exists(path[:-4] + ".cert"):
            raise TlsSetupError(f"{path}: client key without its certificate {os.path.basename(path[:-4])}.cert")


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__).splitlines()[0][:160]


def explain_tls_failure(where: str, reason: str, scheme: str) -> str | None:
    """A message saying what to do next for a TLS failure ``reason`` (httpx/OpenSSL text), or None."""
    low = reason.lower()
    if (
        "wrong_version_number" in low
        or "wrong version number" in low
        or "record layer failure" in low
        or "packet length too long" in low
        or "http_request" in low
    ):
        return (
            f"{where}: the registry speaks plain http, not https: use --insecure (or an http:// prefix) "
            "if that is intended"
        )
    if "certificate has expired" in low or "certificate is not yet valid" in low:
        return f"{where}: the registry's TLS certificate has expired or is not yet valid ({reason[:120]})"
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return (
            f"{where}: the registry's TLS certificate is not trusted ({reason[:120]}): give its CA with "
            "--cert-dir DIR (DIR/ca.crt) or /etc/containers/certs.d/HOST:PORT/ca.crt; --tls-verify=false "
            "skips the check"
        )
    if scheme == "https" and (
        "alert bad certificate" in low
        or "tlsv1 alert" in low
        or "certificate required" in low
        or "handshake failure" in low
    ):
        return (
            f"{where}: TLS handshake refused ({reason[:120]}): the registry may want a client certificate "
            "(client.cert and client.key in --cert-dir DIR or /etc/containers/certs.d/HOST:PORT/)"
        )
    return None
