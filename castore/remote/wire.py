"""What a registry answer may cost us: raw, bounded, never-decoded body reads, and streamed blob
transfers checked as they go (split from ``client`` so each stays readable).

Bodies are read with ``iter_raw`` under a byte budget and a deadline; any ``Content-Encoding`` but
identity is refused (a compression bomb of a few KiB would otherwise become GiBs before any limit).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from castore.errors import Aborted, IntegrityError, RemoteError
from castore.fs.io import write_all

if TYPE_CHECKING:
    from castore.remote.client import Registry

PIECE = 1 << 20
MIN_RATE = 64 << 10  # bytes/s a transfer must average (after 2 x the timeout of grace)


MAX_SMALL_ANSWER = 64 << 10


def _error_text(status: int, reason: str, body: bytes) -> str:
    """The registry's own error code and message, when it sent the spec's JSON error body."""
    try:
        err = json.loads(body)["errors"][0]
        text = f"{err.get('code', '')}: {err.get('message', '')}".strip(": ")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RecursionError):
        text = reason
    return text[:200]


@dataclass(frozen=True, slots=True)
class Answer:
    """A response whose body was read, at most MAX_SMALL_ANSWER bytes of it."""

    status: int
    headers: httpx.Headers
    url: str
    body: bytes
    reason: str


def _encoding(resp: httpx.Response) -> str | None:
    """The response's Content-Encoding when it is anything but identity (we never decode)."""
    codings = [c.strip().lower() for c in resp.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    return ", ".join(codings)[:60] if codings else None


def _refuse_encoding(resp: httpx.Response, what: str) -> None:
    """IntegrityError (exit 4) when the answer is compressed although we asked for identity."""
    enc = _encoding(resp)
    if enc is not None:
        raise IntegrityError(
            f"{what}: answer has Content-Encoding {enc!r} although identity was asked for (refused, never decoded)"
        )


def _raw_body(resp: httpx.Response, limit: int, deadline: float) -> tuple[bytes, bool]:
    """Up to ``limit`` raw bytes of the body, never decoded; and whether it was cut (too long or too slow)."""
    data = bytearray()
    for piece in resp.iter_raw():
        data += piece
        if len(data) > limit or time.monotonic() > deadline:
            return bytes(data[:limit]), True  # the rest is dropped, never buffered
    return bytes(data), False


def _bounded_body(resp: httpx.Response, deadline: float, limit: int = MAX_SMALL_ANSWER) -> bytes:
    """An error answer's body for its message: at most ``limit`` raw bytes; empty when compressed."""
    if _encoding(resp) is not None:
        return b""
    return _raw_body(resp, limit, deadline)[0]


def _origin(url: str) -> tuple[str, str]:
    u = httpx.URL(url)
    return u.scheme, u.netloc.decode("ascii", "replace")


def _challenge_params(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}


class _Unauthorized(Exception):
    def __init__(self, challenge: str) -> None:
        super().__init__("401")
        self.challenge = challenge


class _Transient(Exception):
    def __init__(self, text: str, retry_after: float | None = None) -> None:
        super().__init__(text)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds only), None when absent or not a number."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


def _hint(status: int, what: str) -> str:
    """What a user can do about a refusal that retrying will not change."""
    if status in (401, 403):
        return (
            "; hint: check the credentials (--username, CONTINUITY_REGISTRY_PASSWORD) and their "
            "rights on this repository"
        )
    if status == 404 and what.startswith("upload"):
        return "; hint: the repository name may be wrong, or the registry does not allow pushing to it"
    if status == 404 and "manifest" in what:
        return "; hint: check the tag or digest"
    if status == 413:
        return "; hint: the registry refuses blobs this large (its body size limit)"
    if status == 400 and "PUT manifest" in what:
        return "; hint: the registry may not accept OCI 1.1 artifacts (artifactType, custom media types)"
    if status == 405:
        return "; hint: the registry does not allow this method here (read-only mirror?)"
    return ""


def guarded_pieces(reg: Registry, resp: httpx.Response, limit: int, *, slow: str, long: str) -> Iterator[bytes]:
    """The raw body of ``resp``: RemoteError ``slow`` when it comes slower than the client's minimum
    rate, IntegrityError ``long`` at a byte beyond ``limit``, Aborted once the transfer is aborted."""
    deadline = reg.deadline(limit)
    got = 0
    for piece in resp.iter_raw():
        if reg.abort.is_set():
            raise Aborted("aborted")
        if time.monotonic() > deadline:
            raise RemoteError(slow)
        got += len(piece)
        if got > limit:
            raise IntegrityError(long)
        yield piece


def _download(reg: Registry, digest: str, size: int, fd: int) -> None:
    h = hashlib.sha256()
    got = 0
    with reg._stream("GET", f"{reg.ref.base}/blobs/{digest}") as resp:
        if resp.status_code != 200:
            body = _bounded_body(resp, reg.small_deadline())
            if resp.status_code == 404:
                raise IntegrityError(f"{reg.where}: blob {digest} is listed but missing")
            reg._check(
                Answer(resp.status_code, resp.headers, str(resp.url), body, resp.reason_phrase),
                f"GET blob {digest}",
                (200,),
            )
        _refuse_encoding(resp, f"{reg.where}: blob {digest}")
        length = resp.headers.get("content-length")
        if length is not None and length != str(size):
            raise IntegrityError(f"{reg.where}: blob {digest} has size {length[:30]}, expected {size}")
        where = f"{reg.where}: blob {digest}"
        slow, long = f"{where}: too slow (under {MIN_RATE >> 10} KiB/s)", f"{where} is larger than its {size} bytes"
        for piece in guarded_pieces(reg, resp, size, slow=slow, long=long):
            got += len(piece)
            h.update(piece)
            write_all(fd, piece)
    if got != size:
        raise IntegrityError(f"{reg.where}: blob {digest} is {got} bytes, expected {size}")
    if "sha256:" + h.hexdigest() != digest:
        raise IntegrityError(f"{reg.where}: blob {digest} has digest sha256:{h.hexdigest()} (wrong bytes)")


def _pieces(view: memoryview, abort: threading.Event) -> Iterator[bytes]:
    for i in range(0, len(view), PIECE):
        if abort.is_set():
            raise Aborted("aborted")
        yield bytes(view[i : i + PIECE])


def _read_exact(fd: int, size: int, digest: str) -> bytes:
    data = bytearray()
    while len(data) < size:
        more = os.read(fd, min(PIECE, size - len(data)))
        if not more:
            raise IntegrityError(f"store blob {digest} is truncated ({len(data)} of {size} bytes; run fsck)")
        data += more
    return bytes(data)


def _hashing_reader(fd: int, size: int, h: hashlib._Hash, abort: threading.Event, digest: str) -> Iterator[bytes]:
    left = size
    while left:
        if abort.is_set():
            raise Aborted("aborted")
        piece = os.read(fd, min(PIECE, left))
        if not piece:
            raise IntegrityError(f"store blob {digest} is truncated (run fsck)")
        h.update(piece)
        left -= len(piece)
        yield piece
