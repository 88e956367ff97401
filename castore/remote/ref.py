"""Registry references: ``[http://|https://]REGISTRY/REPO[:TAG|@DIGEST]``, parsed at the edge."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from castore.digest import is_digest
from castore.errors import UnsafeInput

DEFAULT_TAG = "latest"
# The OCI distribution spec's grammar for repository names and tags.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)


@dataclass(frozen=True, slots=True)
class Reference:
    """Where a tree lives in a registry: host, repository and a tag or a digest."""

    registry: str  # host[:port]
    repo: str
    tag: str = DEFAULT_TAG
    digest: str = ""
    scheme: str = "https"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when pinned, else the tag."""
        return self.digest or self.tag

    @property
    def endpoint(self) -> str:
        """Where the registry answers: ``docker.io`` is served by ``registry-1.docker.io``."""
        return "registry-1.docker.io" if self.registry in ("docker.io", "index.docker.io") else self.registry

    @property
    def base(self) -> str:
        """``scheme://endpoint/v2/repo``."""
        return f"{self.scheme}://{self.endpoint}/v2/{self.repo}"

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repo, self.tag, digest, self.scheme)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repo}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def host_of(registry: str) -> str:
    """The host part of ``host[:port]`` (brackets of an IPv6 literal removed)."""
    if registry.startswith("["):
        return registry[1 : registry.index("]")]
    return registry.rsplit(":", 1)[0] if ":" in registry else registry


def is_loopback(registry: str) -> bool:
    """True for localhost and loopback addresses, which get plain http by default (as docker does)."""
    host = host_of(registry)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_reference(text: str, *, insecure: bool = False, allow_digest: bool = True) -> Reference:
    """Parse ``[http://|https://]REGISTRY/REPO[:TAG|@DIGEST]``. Raises UnsafeInput.

    The scheme is http for an ``http://`` prefix, ``insecure`` or a loopback
    registry; https otherwise. An explicit prefix wins over ``insecure``.
    """
    rest = text
    scheme = ""
    for prefix in ("http://", "https://"):
        if rest.startswith(prefix):
            scheme, rest = prefix[:-3], rest[len(prefix) :]
    registry, sep, path = rest.partition("/")
    if not sep or not registry or not path:
        raise UnsafeInput(
            f"invalid reference {text[:200]!r}: expected REGISTRY/REPO[:TAG|@DIGEST] (the registry "
            "is always named, e.g. docker.io/library/alpine:3)"
        )
    if not _HOST_RE.fullmatch(registry):
        raise UnsafeInput(f"invalid registry {registry[:200]!r} in {text[:200]!r}")
    if not scheme and "." not in registry and ":" not in registry and registry != "localhost":
        raise UnsafeInput(
            f"reference {text[:200]!r} names no registry ({registry[:100]!r} is not a host): expected "
            "REGISTRY/REPO[:TAG|@DIGEST], e.g. docker.io/library/alpine:3 or 127.0.0.1:5000/team/app"
        )
    tag, digest = DEFAULT_TAG, ""
    if "@" in path:
        path, _, digest = path.partition("@")
        if not allow_digest:
            raise UnsafeInput(f"invalid reference {text[:200]!r}: push takes a tag, not a digest")
        if not is_digest(digest):
            raise UnsafeInput(f"invalid digest {digest[:100]!r} in {text[:200]!r}")
    elif ":" in path:
        path, _, tag = path.partition(":")
        if not TAG_RE.fullmatch(tag):
            raise UnsafeInput(f"invalid tag {tag[:200]!r} in {text[:200]!r}")
    if registry in ("docker.io", "index.docker.io") and "/" not in path:
        path = "library/" + path  # docker.io/alpine is docker.io/library/alpine
    if len(path) > 255 or not REPO_RE.fullmatch(path):
        raise UnsafeInput(f"invalid repository {path[:200]!r} in {text[:200]!r}: lowercase [a-z0-9._-/] only")
    if not scheme:
        scheme = "http" if insecure or is_loopback(registry) else "https"
    return Reference(registry, path, tag, digest, scheme)
