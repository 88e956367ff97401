"""git's and ssh-keygen's ``allowed_signers`` file (ssh-keygen(1), ALLOWED SIGNERS).

One key a line: ``PRINCIPALS [OPTIONS] KEYTYPE BASE64 [COMMENT]``. PRINCIPALS
is a comma list of patterns (``*`` and ``?`` wildcards, ``!`` negates);
OPTIONS a comma list of ``namespaces="PATTERNS"``, ``valid-after="TIME"``,
``valid-before="TIME"`` and ``cert-authority`` (certificates are not supported:
such lines never match). TIME is ``YYYYMMDD[HHMM[SS]]``, local, or UTC with a
``Z`` suffix. ``#`` starts a comment line.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass

from castore.errors import UnsafeInput
from castore.fs.io import read_capped
from castore.sign.keys import KEY_TYPES, PublicKey, parse_public_text

MAX_FILE = 4 << 20


@dataclass(frozen=True, slots=True)
class Signer:
    principals: str  # the pattern list as written
    key: PublicKey
    namespaces: str | None = None
    valid_after: float | None = None
    valid_before: float | None = None
    cert_authority: bool = False
    line: int = 0

    def allows(self, principal: str | None, namespace: str, when: float) -> bool:
        """This line lets ``principal`` (None: any it names) sign in ``namespace`` at time ``when``."""
        if self.cert_authority:
            return False
        if principal is not None and not match_list(principal, self.principals):
            return False
        if self.namespaces is not None and not match_list(namespace, self.namespaces):
            return False
        if self.valid_after is not None and when < self.valid_after:
            return False
        return not (self.valid_before is not None and when > self.valid_before)


def match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` any run, ``?`` one character; linear time (no regex backtracking)."""
    t = p = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            t, p = t + 1, p + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif star >= 0:
            p, mark = star + 1, mark + 1
            t = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def match_list(text: str, patterns: str) -> bool:
    """OpenSSH's match_pattern_list: any positive pattern matches and no negated one does."""
    found = False
    for p in patterns.split(","):
        neg = p.startswith("!")
        if neg:
            p = p[1:]
        if match_pattern(text, p):
            if neg:
                return False
            found = True
    return found


def _tokens(line: str, where: str) -> list[str]:
    """Split on blanks, keeping double-quoted runs (quotes kept) inside one token."""
    out, cur, quoted = [], "", False
    for c in line:
        if c == '"':
            quoted = not quoted
            cur += c
        elif c in " \t" and not quoted:
            if cur:
                out.append(cur)
                cur = ""
        else:
            cur += c
    if quoted:
        raise UnsafeInput(f"{where}: unterminated quote")
    if cur:
        out.append(cur)
    return out


def parse_time(text: str, where: str) -> float:
    utc = text.endswith(("Z", "z"))
    digits = text[:-1] if utc else text
    if not digits.isdigit() or len(digits) not in (8, 12, 14):
        raise UnsafeInput(f"{where}: invalid time {text[:40]!r} (YYYYMMDD[HHMM[SS]][Z])")
    digits = digits.ljust(14, "0")
    try:
        t = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        raise UnsafeInput(f"{where}: invalid time {text[:40]!r}") from None
    return float(calendar.timegm(t) if utc else time.mktime(t))


def _options(text: str, where: str) -> dict[str, str | None]:
    opts: dict[str, str | None] = {}
    for part in re.findall(r'(?:[^,"]|"[^"]*")+', text):
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if eq:
            if not (len(value) >= 2 and value[0] == value[-1] == '"'):
                raise UnsafeInput(f"{where}: option {name} needs a quoted value")
            opts[name] = value[1:-1]
        else:
            opts[name] = None
    for name in opts:
        if name not in ("namespaces", "valid-after", "valid-before", "cert-authority"):
            raise UnsafeInput(f"{where}: unknown option {name[:40]!r}")
    return opts


def parse(text: str, source: str) -> list[Signer]:
    """Every line of an allowed_signers file. Raises UnsafeInput (exit 3) naming the bad line."""
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}:{n}"
        toks = _tokens(line, where)
        if len(toks) < 3:
            raise UnsafeInput(f"{where}: expected PRINCIPALS [OPTIONS] KEYTYPE BASE64")
        principals = toks[0].strip('"')
        opts: dict[str, str | None] = {}
        rest = toks[1:]
        if rest[0] not in KEY_TYPES and not rest[0].startswith(("ssh-", "ecdsa-", "sk-")):
            opts = _options(rest[0], where)
            rest = rest[1:]
        if len(rest) < 2:
            raise UnsafeInput(f"{where}: expected KEYTYPE BASE64 after the principals")
        try:
            key = parse_public_text(rest[0], rest[1])
        except ValueError as exc:
            raise UnsafeInput(f"{where}: {exc}") from None
        va, vb = opts.get("valid-after"), opts.get("valid-before")
        out.append(
            Signer(
                principals,
                key,
                namespaces=opts.get("namespaces"),
                valid_after=parse_time(va, where) if va else None,
                valid_before=parse_time(vb, where) if vb else None,
                cert_authority="cert-authority" in opts,
                line=n,
            )
        )
    return out


def load(path: str) -> list[Signer]:
    data = read_capped(path, MAX_FILE, "an allowed_signers file", UnsafeInput, missing=UnsafeInput)
    return parse(data.decode("utf-8", "replace"), path)


def find(
    signers: list[Signer], key: PublicKey, principals: list[str] | None, namespace: str, when: float
) -> str | None:
    """The principal the file allows ``key`` to sign as (one of ``principals`` when given), or None."""
    for s in signers:
        if s.key.blob != key.blob:
            continue
        if principals:
            for p in principals:
                if s.allows(p, namespace, when):
                    return p
        elif s.allows(None, namespace, when):
            return s.principals
    return None


__all__ = ["Signer", "find", "load", "match_list", "parse", "parse_time"]
