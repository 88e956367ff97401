"""A counting (and, on demand, lying) HTTP proxy in front of the real registry, for the lazy-mount and
push-stream tests and the lazy-mount benchmark: every request is forwarded to the registry; the proxy
records (method, path, Range header, body bytes sent; for a request with a body, the bytes received),
while ``lie`` is set flips one byte of every blob body it forwards (a registry serving wrong bytes for
a range), and answers the methods in ``refuse`` with 405 (a registry without chunked uploads)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "host",
    "content-length",
}


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    path: str
    range: str
    nbytes: int

    @property
    def is_blob(self) -> bool:
        return "/blobs/" in self.path and self.method == "GET"


class CountingProxy:
    """``127.0.0.1:PORT`` forwarding to ``upstream`` (``127.0.0.1:PORT`` of a registry)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.lie = False
        self.refuse: frozenset[str] = frozenset()  # methods answered 405, unforwarded (no chunked uploads)
        self.client = httpx.Client(base_url=f"http://{upstream}", timeout=30, follow_redirects=False)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def _forward(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n) if n else None
                if self.command in proxy.refuse:
                    proxy.seen.append(Seen(self.command, self.path, "", 0))
                    err = b'{"errors":[{"code":"UNSUPPORTED","message":"not here"}]}'
                    self.send_response(405)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(err)))
                    self.end_headers()
                    self.wfile.write(err)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                resp = proxy.client.request(self.command, self.path, headers=headers, content=body)
                data = resp.content if self.command != "HEAD" else b""
                if (
                    proxy.lie
                    and self.command == "GET"
                    and "/blobs/sha256:" in self.path
                    and data
                    and resp.status_code in (200, 206)
                ):
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                nbytes = len(data) + len(body or b"")
                proxy.seen.append(Seen(self.command, self.path, self.headers.get("range", ""), nbytes))
                self.send_response(resp.status_code)
                for k, v in resp.headers.items():
                    if k.lower() == "location":  # upload sessions: the next request comes here too
                        v = v.replace(f"//{proxy.upstream}/", f"//{proxy.address}/")
                    if k.lower() not in HOP:
                        self.send_header(k, v)
                self.send_header(
                    "Content-Length",
                    str(len(data) if self.command != "HEAD" else resp.headers.get("content-length", "0")),
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def blob_gets(self, since: int = 0) -> list[Seen]:
        return [s for s in self.seen[since:] if s.is_blob]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()
