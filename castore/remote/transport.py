"""Requests to a registry over httpx: redirects, credentials, retries, bounded answers, one-line errors.

Nothing a registry sends is trusted here: sizes are bounded before and while
reading, and callers verify digests. Bodies are read raw (``iter_raw``) with a
byte budget and never decoded: we ask for ``Accept-Encoding: identity`` and
refuse any other ``Content-Encoding`` (a compression bomb of a few KiB on the
wire would otherwise become GiBs in memory before any limit applies).
Redirects are followed here, not by httpx, which reads and decodes every
redirect's body in full. Transport failures and unexpected statuses become
one-line ``RemoteError`` (exit 1); answers that contradict what was asked
for become ``IntegrityError`` (exit 4). A 401 is answered by
``castore.remote.challenge``.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Self, TypeVar

# isort: off
import castore.remote.lean_httpx  # noqa: F401  # first: httpx without its command-line client
import httpx

# isort: on
from castore.errors import Aborted, NotFound, RemoteError
from castore.remote.challenge import answer_challenge, creds_hint
from castore.remote.ref import Reference, is_loopback
from castore.remote.tls import TlsOptions, explain_tls_failure, ssl_context
from castore.remote.wire import (
    MAX_SMALL_ANSWER,
    MIN_RATE,
    Answer,
    _bounded_body,
    _error_text,
    _hint,
    _origin,
    _retry_after,
    _Transient,
    _Unauthorized,
)


def _load_httpcore() -> None:
    """Import httpcore (which httpx imports when the first Client is made) without trio: httpcore
    imports trio when it is installed (pyfuse3 brings it) for async backends continuity never uses,
    0.06-0.17 s of every registry verb. Blocked only meanwhile: a later ``import trio`` (the mount) works."""
    if "trio" in sys.modules or "httpcore" in sys.modules:
        return
    sys.modules["trio"] = None  # type: ignore[assignment]  # import trio -> ImportError
    try:
        import httpcore  # noqa: F401
    finally:
        del sys.modules["trio"]


_load_httpcore()
T = TypeVar("T")
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
RETRIES = 4  # transient failures (429, 5xx, connection errors) retried with exponential backoff
MAX_BACKOFF = 10.0  # seconds, also the most a Retry-After is honoured
USER_AGENT = "continuity/0.1 (castore)"
DEFAULT_TIMEOUT = 30.0
__all__ = ["Aborted", "Access", "Transport"]


def _env_timeout() -> float:
    """Seconds without progress before a request fails: CONTINUITY_REGISTRY_TIMEOUT, default 30."""
    try:
        value = float(os.environ.get("CONTINUITY_REGISTRY_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if 0 < value <= 3600 else DEFAULT_TIMEOUT


@dataclass(frozen=True, slots=True)
class Access:
    """How to reach a registry: credentials given (``--creds``), whether to look up stored ones
    (``castore.remote.auth``: auth.json, docker config, credential helpers) and TLS options."""

    username: str | None = None
    password: str | None = None
    authfile: str | None = None
    stored: bool = True
    tls: TlsOptions = TlsOptions()


class Transport:
    """Requests to one repository of one registry: redirects, credentials, retries, error lines.

    Thread-safe: transfers run on a pool sharing one connection pool. ``castore.remote.client.Registry``
    adds the blob and manifest calls."""

    def __init__(
        self,
        ref: Reference,
        *,
        username: str | None = None,
        password: str | None = None,
        push: bool = False,
        jobs: int = 4,
        timeout: float | None = None,
        access: Access | None = None,
    ) -> None:
        if timeout is None:
            timeout = _env_timeout()
        self.timeout = timeout
        self.ref = ref
        self.where = f"registry {ref.registry}"
        self.access = access or Access()
        if not username and self.access.username:
            username, password = self.access.username, self.access.password
        self._creds = (username, password or "") if username else None
        self._creds_source = "given"
        self._looked_up = False
        self._scope = f"repository:{ref.repo}:{'pull,push' if push else 'pull'}" if ref.repo else None
        self._authz: str | None = None
        self._auth_lock = threading.Lock()
        self.abort = threading.Event()
        self._origin = _origin(ref.base)
        self.http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,  # followed by _stream: httpx would read each redirect's body in full
            limits=httpx.Limits(max_connections=max(jobs, 1) + 2, max_keepalive_connections=max(jobs, 1) + 2),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            trust_env=not is_loopback(ref.registry),  # no proxy for loopback registries
            verify=ssl_context(ref.registry, self.access.tls) if ref.scheme == "https" else True,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def deadline(self, size: int) -> float:
        """When a transfer of ``size`` bytes must be over: a trickling server cannot hold us forever."""
        return time.monotonic() + 2 * self.timeout + size / MIN_RATE

    def small_deadline(self, limit: int = MAX_SMALL_ANSWER) -> float:
        """When reading a small answer (error body, token) of at most ``limit`` bytes must be over."""
        return time.monotonic() + 2 * self.timeout + limit / MIN_RATE

    @contextmanager
    def _stream(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
        authz: str | None = None,
        authz_origin: tuple[str, str] | None = None,
    ) -> Iterator[httpx.Response]:
        """One request, its body unread; redirects followed here (at most MAX_REDIRECTS, bodies never read).

        Credentials (``authz``, default the registry's) go only to ``authz_origin`` (default the
        registry's): never to an upload Location, a blob redirect or anything else on another origin.
        A redirect from https to plain http is refused.
        """
        if authz_origin is None:
            authz, authz_origin = self._authz, self._origin
        for _ in range(MAX_REDIRECTS + 1):
            h = dict(headers or {})
            if authz and _origin(url) == authz_origin:
                h["Authorization"] = authz
            with self.http.stream(method, url, headers=h, content=content) as resp:
                loc = resp.headers.get("location")
                if resp.status_code not in REDIRECTS or not loc:
                    yield resp
                    return
                nxt = resp.url.join(loc)  # the redirect's body is dropped unread with the response
            if nxt.scheme not in ("http", "https") or (httpx.URL(url).scheme == "https" and nxt.scheme == "http"):
                raise RemoteError(f"{self.where}: {method} {url[:100]}: redirect to {str(nxt)[:100]!r} refused")
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, content = ("HEAD" if method == "HEAD" else "GET"), None
            elif content is not None and not isinstance(content, bytes):
                raise RemoteError(f"{self.where}: {method} {url[:100]}: redirected upload refused")
            url = str(nxt)
        raise RemoteError(f"{self.where}: {method} {url[:100]}: more than {MAX_REDIRECTS} redirects")

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Iterator[bytes] | None = None,
    ) -> Answer:
        """One request; the answer's body is read, bounded (registries answer small JSON or nothing)."""
        with self._stream(method, url, headers=headers, content=content) as resp:
            body = b"" if method == "HEAD" else _bounded_body(resp, self.small_deadline())
            return Answer(resp.status_code, resp.headers, str(resp.url), body, resp.reason_phrase)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one request (or one whole upload or download), logging in on 401 and retrying
        transient failures (429, 5xx, connection errors) a bounded number of times."""
        logged_in = False
        attempt = 0
        while True:
            wait: float | None = None
            if self.abort.is_set():
                raise Aborted("aborted")
            try:
                return fn()
            except _Unauthorized as exc:
                if logged_in:
                    raise RemoteError(f"{self.where}: {what}: authentication failed: {creds_hint(self)}") from None
                answer_challenge(self, exc.challenge)
                logged_in = True
                continue
            except _Transient as exc:
                reason = str(exc)
                wait = exc.retry_after
            except httpx.TimeoutException:
                reason = "timed out"
            except httpx.TransportError as exc:
                reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                if isinstance(exc, httpx.UnsupportedProtocol) or "SSL" in reason:
                    attempt = RETRIES
                    explained = explain_tls_failure(self.where, reason, self.ref.scheme)
                    if explained:
                        raise RemoteError(explained) from None
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # redirects, decoding, a bad Location: no retry
                reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                attempt = RETRIES
            if attempt >= RETRIES:
                raise RemoteError(
                    f"{self.where}: {what}: {reason}" + (f" (after {attempt + 1} attempts)" if attempt else "")
                )
            attempt += 1
            if wait is None:
                wait = min(MAX_BACKOFF, 0.25 * 2**attempt) * (0.5 + random.random() / 2)
            time.sleep(min(wait, MAX_BACKOFF))

    def _check(self, ans: Answer, what: str, ok: tuple[int, ...]) -> None:
        if ans.status in ok:
            return
        if ans.status == 401 and _origin(ans.url) == self._origin:  # never log in to a redirect's origin
            raise _Unauthorized(ans.headers.get("www-authenticate", ""))
        text = _error_text(ans.status, ans.reason, ans.body)
        if ans.status == 400 and b"HTTP request to an HTTPS server" in ans.body:
            raise RemoteError(
                f"{self.where}: the registry speaks https, not plain http: drop --insecure (or use an https:// prefix)"
            )
        if ans.status == 429 or ans.status >= 500:
            raise _Transient(f"{ans.status} {text}", _retry_after(ans.headers.get("retry-after")))
        if ans.status == 404:
            raise NotFound(f"{self.where}: {what}: not found ({text}){_hint(ans.status, what)}")
        raise RemoteError(f"{self.where}: {what}: {ans.status} {text}{_hint(ans.status, what)}")

    def ping(self) -> None:
        """GET /v2/, logging in when challenged: checks the registry is there and the credentials work."""
        url = f"{self.ref.scheme}://{self.ref.endpoint}/v2/"

        def go() -> None:
            self._check(self._send("GET", url), "GET /v2/", (200,))

        self._call("GET /v2/", go)
