"""Registry credentials where the container tools keep them (containers-auth.json(5), docker config).

Lookup for ``HOST[:PORT]`` (first hit wins), as podman and skopeo do:

1. ``--creds USER[:PASS]`` (given to the caller, not read here);
2. ``--authfile FILE`` when given, else ``$REGISTRY_AUTH_FILE``, else
   ``${XDG_RUNTIME_DIR}/containers/auth.json`` (``/run/containers/UID/auth.json`` without
   ``XDG_RUNTIME_DIR``);
3. ``$XDG_CONFIG_HOME/containers/auth.json`` (default ``~/.config``);
4. ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``).

In each file: ``credHelpers[HOST]`` names a helper; else an ``auths`` entry whose key is the
host (or ``https://HOST``, ``HOST/v1/``; a more specific ``HOST/REPO`` key first) with a base64
``auth`` of ``USER:PASS``; else ``credsStore`` names a helper. A helper is the program
``docker-credential-NAME`` speaking the docker credential helper protocol: ``get`` with the
server on stdin, ``{"Username": ..., "Secret": ...}`` on stdout. A helper that is missing or
fails is a one-line ``CredentialError`` (exit 1) saying what to do; "credentials not found"
from it means no credentials (the lookup goes on).

``login``/``logout`` write the file podman writes (``auth_file_for_write``), atomically,
mode 0600, keeping every other entry.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass

from castore.errors import CastoreError, UnsafeInput
from castore.fs.io import unlink_on_failure

MAX_AUTH_FILE = 4 << 20
MAX_HELPER_OUTPUT = 1 << 20
HELPER_TIMEOUT = 60.0


class CredentialError(CastoreError):
    """Credentials could not be read (a helper failed, a file is unreadable): exit 1."""


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for messages

    def __repr__(self) -> str:  # never print a secret
        return f"Credentials({self.username!r}, <secret>, {self.source!r})"


def auth_file_for_write(authfile: str | None = None) -> str:
    """The file ``login``/``logout`` change: ``--authfile``, else REGISTRY_AUTH_FILE, else podman's runtime file."""
    if authfile:
        return authfile
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return env
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/containers/{os.getuid()}"
    return os.path.join(runtime, "containers", "auth.json")


def auth_files(authfile: str | None = None) -> list[str]:
    """Every file consulted, in order."""
    home = os.path.expanduser("~")
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
    docker = os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker")
    files = [
        auth_file_for_write(authfile),
        os.path.join(config, "containers", "auth.json"),
        os.path.join(docker, "config.json"),
    ]
    out: list[str] = []
    for f in files:
        if f not in out:
            out.append(f)
    return out


def read_auth_file(path: str) -> dict[str, object] | None:
    """The parsed file, None when absent. CredentialError when unreadable or not a JSON object."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_AUTH_FILE + 1)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_AUTH_FILE:
        raise CredentialError(f"{path}: over {MAX_AUTH_FILE} bytes, not an auth file")
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise CredentialError(f"{path}: not valid JSON (fix or remove the file)") from None
    if not isinstance(doc, dict):
        raise CredentialError(f"{path}: not a JSON object (fix or remove the file)")
    return doc


def _keys_for(registry: str, repo: str | None) -> list[str]:
    keys = []
    if repo:
        parts = repo.split("/")
        keys += [f"{registry}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)]
    keys += [
        registry,
        f"https://{registry}",
        f"http://{registry}",
        f"{registry}/v1/",
        f"https://{registry}/v1/",
        f"https://{registry}/v2/",
    ]
    if registry in ("docker.io", "registry-1.docker.io", "index.docker.io"):
        keys.append("https://index.docker.io/v1/")
    return keys


def _decode_auth(value: object, path: str, key: str) -> tuple[str, str] | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise CredentialError(f"{path}: auths[{key[:80]!r}].auth is not base64 of USER:PASSWORD") from None
    user, sep, password = raw.partition(":")
    if not sep or not user:
        raise CredentialError(f"{path}: auths[{key[:80]!r}].auth is not base64 of USER:PASSWORD")
    return user, password


def lookup(registry: str, repo: str | None = None, *, authfile: str | None = None) -> Credentials | None:
    """The stored credentials for ``registry`` (``host[:port]``), or None."""
    for path in auth_files(authfile):
        doc = read_auth_file(path)
        if not doc:
            continue
        helpers = doc.get("credHelpers")
        if isinstance(helpers, dict) and isinstance(helpers.get(registry), str):
            got = helper_get(helpers[registry], registry)
            if got is not None:
                return got
        auths = doc.get("auths")
        if isinstance(auths, dict):
            for key in _keys_for(registry, repo):
                entry = auths.get(key)
                if isinstance(entry, dict):
                    pair = _decode_auth(entry.get("auth"), path, key)
                    if pair is None and isinstance(entry.get("username"), str):
                        pair = entry["username"], str(entry.get("password", ""))
                    if pair is not None:
                        return Credentials(pair[0], pair[1], path)
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            got = helper_get(store, registry)
            if got is not None:
                return got
    return None


def helper_get(name: str, server: str) -> Credentials | None:
    """Ask ``docker-credential-NAME get`` for ``server``; None when it has nothing for it."""
    if not name or "/" in name or name.startswith(".") or not name.isprintable():
        raise CredentialError(f"invalid credential helper name {name[:60]!r}")
    prog = f"docker-credential-{name}"
    try:
        p = subprocess.run([prog, "get"], input=server.encode(), capture_output=True, timeout=HELPER_TIMEOUT)
    except FileNotFoundError:
        raise CredentialError(
            f"credential helper {prog} is not installed (install it, or remove "
            f"{name!r} from credHelpers/credsStore, or use --creds)"
        ) from None
    except subprocess.TimeoutExpired:
        raise CredentialError(f"credential helper {prog} did not answer within {HELPER_TIMEOUT:.0f} s") from None
    except OSError as exc:
        raise CredentialError(f"credential helper {prog}: {exc.strerror}") from None
    out = p.stdout[:MAX_HELPER_OUTPUT]
    if p.returncode != 0:
        text = (out or p.stderr).decode("utf-8", "replace").strip().splitlines()
        msg = text[0][:160] if text else f"exit status {p.returncode}"
        if "credentials not found" in msg.lower():
            return None
        raise CredentialError(
            f"credential helper {prog} failed for {server}: {msg!r} (fix the helper, or use --creds USER[:PASS])"
        )
    try:
        doc = json.loads(out)
        user, secret = doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CredentialError(
            f'credential helper {prog} answered something else than {{"Username": ..., "Secret": ...}}'
        ) from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise CredentialError(f"credential helper {prog}: Username and Secret must be strings")
    return Credentials(user, secret, prog)


def parse_creds(text: str) -> tuple[str, str | None]:
    """``USER[:PASS]`` as skopeo's ``--creds``: (user, password or None to ask for it)."""
    user, sep, password = text.partition(":")
    if not user:
        raise UnsafeInput("--creds: expected USER[:PASSWORD]")
    return user, (password if sep else None)


def store_login(registry: str, username: str, password: str, *, authfile: str | None = None) -> str:
    """Record ``username:password`` for ``registry`` in the login file; return its path."""
    path = auth_file_for_write(authfile)
    doc = read_auth_file(path) or {}
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = {}
    auths[registry] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
    doc["auths"] = auths
    _write_json(path, doc)
    return path


def remove_login(registry: str, *, authfile: str | None = None) -> bool:
    """Forget ``registry`` in the login file; False when there was nothing to forget."""
    path = auth_file_for_write(authfile)
    doc = read_auth_file(path)
    auths = doc.get("auths") if doc else None
    if not isinstance(auths, dict):
        return False
    keys = [k for k in _keys_for(registry, None) if k in auths]
    if not keys:
        return False
    for k in keys:
        del auths[k]
    assert doc is not None
    _write_json(path, doc)
    return True


def _write_json(path: str, doc: dict[str, object]) -> None:
    d = os.path.dirname(path) or "."
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth-", dir=d)
    except OSError as exc:
        raise CredentialError(f"{path}: cannot write ({exc.strerror})") from None
    with unlink_on_failure(tmp):
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
