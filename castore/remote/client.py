"""A small OCI Distribution client over httpx: blobs (HEAD, GET, POST+PUT upload) and manifests.

Nothing a registry sends is trusted here: sizes are bounded before and while
reading, and callers verify digests. Bodies are read raw (``iter_raw``) with a
byte budget and never decoded: we ask for ``Accept-Encoding: identity`` and
refuse any other ``Content-Encoding`` (a compression bomb of a few KiB on the
wire would otherwise become GiBs in memory before any limit applies).
Redirects are followed here, not by httpx, which reads and decodes every
redirect's body in full. Transport failures and unexpected statuses become
one-line ``RemoteError`` (exit 1); answers that contradict what was asked
for become ``IntegrityError`` (exit 4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode, urljoin

import httpx

from castore.errors import Aborted, IntegrityError, NotFound, RemoteError
from castore.remote.oci import OCI_INDEX, OCI_MANIFEST
from castore.remote.ref import Reference, is_loopback
from castore.remote.tls import TlsOptions, explain_tls_failure, ssl_context
from castore.remote.wire import (
    MAX_SMALL_ANSWER,
    MIN_RATE,
    PIECE,
    Answer,
    _bounded_body,
    _challenge_params,
    _download,
    _error_text,
    _hashing_reader,
    _hint,
    _origin,
    _pieces,
    _raw_body,
    _read_exact,
    _refuse_encoding,
    _retry_after,
    _Transient,
    _Unauthorized,
)

T = TypeVar("T")
SMALL_BLOB = 8 << 20  # read, verify, then send; larger blobs are streamed and checked as they go
MAX_TOKEN_ANSWER = 1 << 20
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)
RETRIES = 4  # transient failures (429, 5xx, connection errors) retried with exponential backoff
MAX_BACKOFF = 10.0  # seconds, also the most a Retry-After is honoured
USER_AGENT = "continuity/0.1 (castore)"
DEFAULT_TIMEOUT = 30.0


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


class Registry:
    """One repository of one registry. Thread-safe: transfers run on a pool sharing one connection pool."""

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

    def __enter__(self) -> Registry:
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

    def _login(self, challenge: str) -> None:
        """Answer a 401's WWW-Authenticate: Basic with the credentials, or fetch a Bearer token."""
        scheme, params = _challenge_params(challenge)
        with self._auth_lock:
            self._stored_creds()
            if scheme == "basic":
                if self._creds is None:
                    raise RemoteError(
                        f"{self.where}: authentication required: run 'continuity login "
                        f"{self.ref.registry}' or give --creds USER[:PASSWORD]"
                    )
                raw = f"{self._creds[0]}:{self._creds[1]}".encode()
                self._authz = "Basic " + base64.b64encode(raw).decode()
            elif scheme == "bearer" and params.get("realm", "").startswith(("https://", "http://")):
                q = {"scope": self._scope} if self._scope else {}
                if "service" in params:
                    q["service"] = params["service"]
                url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(q)
                basic = None
                if self._creds:
                    if self.ref.scheme == "https" and not params["realm"].startswith("https://"):
                        raise RemoteError(
                            f"{self.where}: the token realm {params['realm'][:100]!r} is plain http; "
                            "credentials are not sent there"
                        )
                    basic = "Basic " + base64.b64encode(f"{self._creds[0]}:{self._creds[1]}".encode()).decode()
                what = f"{self.where}: token request to {params['realm'][:100]}"
                try:
                    # the credentials go to the realm's origin only, not to where it may redirect
                    with self._stream("GET", url, authz=basic, authz_origin=_origin(url)) as resp:
                        status = resp.status_code
                        if status == 200:
                            _refuse_encoding(resp, what)
                            body, cut = _raw_body(resp, MAX_TOKEN_ANSWER, self.small_deadline(MAX_TOKEN_ANSWER))
                            if cut:
                                raise RemoteError(f"{what}: answer over {MAX_TOKEN_ANSWER} bytes or too slow")
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                    raise RemoteError(f"{what}: {reason}") from None
                if status in (401, 403):
                    raise RemoteError(f"{self.where}: token request refused ({status}): " + self._creds_hint())
                if status != 200:
                    raise RemoteError(f"{self.where}: token request refused ({status})")
                try:
                    doc = json.loads(body)
                    token = doc.get("token") or doc.get("access_token")
                except (ValueError, AttributeError, RecursionError):
                    token = None
                if not isinstance(token, str) or not token or not token.isprintable():
                    raise RemoteError(f"{self.where}: token answer has no token")
                self._authz = "Bearer " + token
            else:
                raise RemoteError(f"{self.where}: authentication required, unsupported scheme {challenge[:60]!r}")

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
                    raise RemoteError(f"{self.where}: {what}: authentication failed: {self._creds_hint()}") from None
                self._login(exc.challenge)
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

    def _stored_creds(self) -> None:
        """Look up stored credentials once, on the first challenge (helpers run only when needed)."""
        if self._creds is not None or self._looked_up or not self.access.stored:
            return
        self._looked_up = True
        from castore.remote.auth import lookup

        found = lookup(self.ref.registry, self.ref.repo or None, authfile=self.access.authfile)
        if found is not None:
            self._creds = (found.username, found.password)
            self._creds_source = found.source

    def _creds_hint(self) -> str:
        if self._creds is None:
            return f"no credentials: run 'continuity login {self.ref.registry}' or give --creds USER[:PASSWORD]"
        return (
            f"user {self._creds[0]!r} (credentials {self._creds_source}) was refused: check the password, "
            f"run 'continuity login {self.ref.registry}' or give --creds USER[:PASSWORD]"
        )

    def ping(self) -> None:
        """GET /v2/, logging in when challenged: checks the registry is there and the credentials work."""
        url = f"{self.ref.scheme}://{self.ref.endpoint}/v2/"

        def go() -> None:
            self._check(self._send("GET", url), "GET /v2/", (200,))

        self._call("GET /v2/", go)

    # --------------------------------------------------------------- blobs

    def has_blob(self, digest: str) -> bool:
        """HEAD the blob: True when the repository already has it."""

        def go() -> bool:
            ans = self._send("HEAD", f"{self.ref.base}/blobs/{digest}")
            if ans.status == 404:
                return False
            self._check(ans, f"HEAD blob {digest}", (200,))
            return True

        return self._call(f"HEAD blob {digest}", go)

    def upload_blob(self, digest: str, size: int, source: bytes | Callable[[], int]) -> None:
        """Upload one blob: POST a session, then one PUT ?digest= with the bytes (monolithic).

        ``source`` is the bytes, or an opener returning a fresh fd on the blob
        (closed here). The bytes are hashed before (small blobs) or while
        (large) they are sent; raises IntegrityError when they do not match
        ``digest`` and ``size``.
        """
        if not callable(source):
            self._upload_memory(digest, source)
            return
        opener = source

        def go() -> None:
            ans = self._send("POST", f"{self.ref.base}/blobs/uploads/")
            self._check(ans, f"upload of {digest}", (202,))
            loc = ans.headers.get("location")
            if not loc:
                raise RemoteError(f"{self.where}: upload of {digest}: no Location in the answer")
            url = urljoin(ans.url, loc)
            url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
            hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            fd = opener()
            try:
                if size <= SMALL_BLOB:
                    body = _read_exact(fd, size, digest)
                    if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
                        raise IntegrityError(f"store blob {digest} is corrupt (digest mismatch; run fsck)")
                    put = self._send("PUT", url, headers=hdrs, content=body)
                else:
                    h = hashlib.sha256()
                    put = self._send("PUT", url, headers=hdrs, content=_hashing_reader(fd, size, h, self.abort, digest))
                    if "sha256:" + h.hexdigest() != digest:
                        raise IntegrityError(f"store blob {digest} is corrupt (digest mismatch; run fsck)")
            finally:
                os.close(fd)
            self._check(put, f"upload of {digest}", (201, 204))

        self._call(f"upload of {digest}", go)

    def _upload_memory(self, digest: str, data: bytes | bytearray) -> None:
        """Upload bytes held in memory (packs): hashed once, then sent in pieces (no copy)."""
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise IntegrityError(f"upload of {digest}: the bytes have another digest")
        view = memoryview(data)

        def go() -> None:
            ans = self._send("POST", f"{self.ref.base}/blobs/uploads/")
            self._check(ans, f"upload of {digest}", (202,))
            loc = ans.headers.get("location")
            if not loc:
                raise RemoteError(f"{self.where}: upload of {digest}: no Location in the answer")
            url = urljoin(ans.url, loc)
            url += ("&" if "?" in url else "?") + urlencode({"digest": digest})
            hdrs = {"Content-Type": "application/octet-stream", "Content-Length": str(len(view))}
            body = bytes(view) if len(view) <= PIECE else _pieces(view, self.abort)
            put = self._send("PUT", url, headers=hdrs, content=body)
            self._check(put, f"upload of {digest}", (201, 204))

        self._call(f"upload of {digest}", go)

    def fetch_blob(self, digest: str, size: int, path: str) -> None:
        """Download a blob into a new file ``path`` (mode 0444), verifying size and digest as it streams.

        Never writes more than ``size`` bytes. Raises IntegrityError on any
        mismatch, or when the registry lists the blob but cannot serve it;
        ``path`` is removed on failure.
        """

        def go() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
            ok = False
            try:
                _download(self, digest, size, fd)
                ok = True
            finally:
                os.close(fd)
                if not ok:
                    os.unlink(path)

        self._call(f"GET blob {digest}", go)

    # ----------------------------------------------------------- manifests

    def get_manifest(self, reference: str, limit: int, accept: str | None = None) -> tuple[bytes, str]:
        """The raw OCI manifest bytes (at most ``limit``, else IntegrityError) and their Content-Type."""
        sep = "@" if reference.startswith("sha256:") else ":"
        what = f"manifest {self.ref.repo}{sep}{reference}"

        def go() -> tuple[bytes, str]:
            with self._stream(
                "GET",
                f"{self.ref.base}/manifests/{reference}",
                headers={"Accept": accept or f"{OCI_MANIFEST}, {OCI_INDEX};q=0.5"},
            ) as resp:
                if resp.status_code != 200:
                    body = _bounded_body(resp, self.small_deadline())
                    self._check(
                        Answer(resp.status_code, resp.headers, str(resp.url), body, resp.reason_phrase), what, (200,)
                    )
                length = resp.headers.get("content-length")
                if length is not None and length.isdigit() and int(length) > limit:
                    raise IntegrityError(f"{self.where}: {what} is {length} bytes (limit {limit})")
                _refuse_encoding(resp, f"{self.where}: {what}")
                data = bytearray()
                deadline = self.deadline(limit)
                for piece in resp.iter_raw():
                    data += piece
                    if time.monotonic() > deadline:
                        raise RemoteError(f"{self.where}: {what}: too slow (under {MIN_RATE >> 10} KiB/s)")
                    if len(data) > limit:
                        raise IntegrityError(f"{self.where}: {what} exceeds {limit} bytes")
                return bytes(data), resp.headers.get("content-type", "")

        return self._call(f"GET {what}", go)

    def put_manifest(self, tag: str, data: bytes) -> str | None:
        """PUT the OCI manifest under ``tag``; return the digest the registry reports, if any."""

        def go() -> str | None:
            ans = self._send(
                "PUT", f"{self.ref.base}/manifests/{tag}", content=data, headers={"Content-Type": OCI_MANIFEST}
            )
            self._check(ans, f"PUT manifest {self.ref.repo}:{tag}", (201, 200, 204))
            reported: str | None = ans.headers.get("docker-content-digest")
            return reported

        return self._call(f"PUT manifest {self.ref.repo}:{tag}", go)

    def get_referrers(self, digest: str, artifact_type: str) -> bytes | None:
        """The OCI 1.1 referrers index of ``digest`` (bounded), or None when the registry lacks the API (404)."""
        what = f"referrers of {self.ref.repo}@{digest}"

        def go() -> bytes | None:
            ans = self._send(
                "GET",
                f"{self.ref.base}/referrers/{digest}?{urlencode({'artifactType': artifact_type})}",
                headers={"Accept": OCI_INDEX},
            )
            if ans.status == 404:
                return None
            self._check(ans, what, (200,))
            return ans.body

        return self._call(f"GET {what}", go)
