"""Answering a registry's 401: Basic with the credentials, or a Bearer token from the realm (the docker
token protocol); stored credentials are looked up once, on the first challenge (castore.remote.auth).

Credentials go only to the registry's own origin, the token request's only to the realm's.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx

from castore.errors import RemoteError
from castore.remote.wire import _challenge_params, _origin, _raw_body, _refuse_encoding

if TYPE_CHECKING:
    from castore.remote.transport import Transport

MAX_TOKEN_ANSWER = 1 << 20


def answer_challenge(t: Transport, challenge: str) -> None:
    """Answer a 401's WWW-Authenticate: Basic with the credentials, or fetch a Bearer token."""
    scheme, params = _challenge_params(challenge)
    with t._auth_lock:
        stored_creds(t)
        if scheme == "basic":
            if t._creds is None:
                raise RemoteError(
                    f"{t.where}: authentication required: run 'continuity login "
                    f"{t.ref.registry}' or give --creds USER[:PASSWORD]"
                )
            raw = f"{t._creds[0]}:{t._creds[1]}".encode()
            t._authz = "Basic " + base64.b64encode(raw).decode()
        elif scheme == "bearer" and params.get("realm", "").startswith(("https://", "http://")):
            q = {"scope": t._scope} if t._scope else {}
            if "service" in params:
                q["service"] = params["service"]
            url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urlencode(q)
            basic = None
            if t._creds:
                if t.ref.scheme == "https" and not params["realm"].startswith("https://"):
                    raise RemoteError(
                        f"{t.where}: the token realm {params['realm'][:100]!r} is plain http; "
                        "credentials are not sent there"
                    )
                basic = "Basic " + base64.b64encode(f"{t._creds[0]}:{t._creds[1]}".encode()).decode()
            what = f"{t.where}: token request to {params['realm'][:100]}"
            try:
                # the credentials go to the realm's origin only, not to where it may redirect
                with t._stream("GET", url, authz=basic, authz_origin=_origin(url)) as resp:
                    status = resp.status_code
                    if status == 200:
                        _refuse_encoding(resp, what)
                        body, cut = _raw_body(resp, MAX_TOKEN_ANSWER, t.small_deadline(MAX_TOKEN_ANSWER))
                        if cut:
                            raise RemoteError(f"{what}: answer over {MAX_TOKEN_ANSWER} bytes or too slow")
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                reason = (str(exc) or type(exc).__name__).splitlines()[0][:200]
                raise RemoteError(f"{what}: {reason}") from None
            if status in (401, 403):
                raise RemoteError(f"{t.where}: token request refused ({status}): " + creds_hint(t))
            if status != 200:
                raise RemoteError(f"{t.where}: token request refused ({status})")
            try:
                doc = json.loads(body)
                token = doc.get("token") or doc.get("access_token")
            except (ValueError, AttributeError, RecursionError):
                token = None
            if not isinstance(token, str) or not token or not token.isprintable():
                raise RemoteError(f"{t.where}: token answer has no token")
            t._authz = "Bearer " + token
        else:
            raise RemoteError(f"{t.where}: authentication required, unsupported scheme {challenge[:60]!r}")


def stored_creds(t: Transport) -> None:
    """Look up stored credentials once, on the first challenge (helpers run only when needed)."""
    if t._creds is not None or t._looked_up or not t.access.stored:
        return
    t._looked_up = True
    from castore.remote.auth import lookup

    found = lookup(t.ref.registry, t.ref.repo or None, authfile=t.access.authfile)
    if found is not None:
        t._creds = (found.username, found.password)
        t._creds_source = found.source


def creds_hint(t: Transport) -> str:
    if t._creds is None:
        return f"no credentials: run 'continuity login {t.ref.registry}' or give --creds USER[:PASSWORD]"
    return (
        f"user {t._creds[0]!r} (credentials {t._creds_source}) was refused: check the password, "
        f"run 'continuity login {t.ref.registry}' or give --creds USER[:PASSWORD]"
    )
