"""The trust policy, modeled on containers-policy.json(5).

::

    {"default": {"type": "accept"},
     "scopes": {"web": {"type": "signedBy", "allowedSigners": "FILE", "principals": ["release@example.com"]},
                "registry.example/team/": {"type": "reject"}}}

A requirement is one object or a list of objects (all must hold). Types:
``accept`` (also ``insecureAcceptAnything``), ``reject``, ``signedBy``
(``allowedSigners``: a git allowed_signers file, relative to the policy's
directory; ``principals``: optional, the principals to accept, else any the
file names). The longest scope that prefixes a name wins (a scope matches
whole components: ``web`` matches ``web`` and ``web/x`` or ``web:tag``, not
``webapp``); a manifest named by digest or file alone gets ``default``.

Where the policy comes from: ``--policy FILE``, else ``$CONTINUITY_POLICY``,
else ``$XDG_CONFIG_HOME/continuity/policy.json`` (``~/.config``), else
``/etc/continuity/policy.json``; with none, everything is accepted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from castore.errors import PolicyRefused, UnsafeInput
from castore.fs.io import read_capped

if TYPE_CHECKING:
    from castore.sign import allowed_signers

# The signature code (castore.sign.sshsig, allowed_signers: the cryptography package, ~40 ms to
# import) is imported where a signedBy requirement is checked: without a policy, or with one that
# only accepts or rejects, checkout, apply and mount never load it.

MAX_POLICY = 1 << 20
SYSTEM_POLICY = "/etc/continuity/policy.json"


@dataclass(frozen=True, slots=True)
class Requirement:
    type: str  # accept | reject | signedBy
    allowed_signers: str | None = None
    principals: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    default: tuple[Requirement, ...]
    scopes: dict[str, tuple[Requirement, ...]]
    source: str | None = None

    @property
    def accepts_all(self) -> bool:
        return all(r.type == "accept" for rs in (self.default, *self.scopes.values()) for r in rs)


ACCEPT_ALL = Policy((Requirement("accept"),), {}, None)


def policy_path(explicit: str | None) -> str | None:
    """Where the policy is read from (None: there is none; accept everything)."""
    if explicit:
        return explicit
    env = os.environ.get("CONTINUITY_POLICY")
    if env:
        return env
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    for p in (os.path.join(xdg, "continuity", "policy.json"), SYSTEM_POLICY):
        if os.path.exists(p):
            return p
    return None


def load_policy(explicit: str | None = None) -> Policy:
    """The policy in effect. Raises UnsafeInput (exit 3) for a policy that cannot be read or understood."""
    path = policy_path(explicit)
    if path is None:
        return ACCEPT_ALL
    data = read_capped(path, MAX_POLICY, "a trust policy", UnsafeInput, missing=UnsafeInput)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise UnsafeInput(f"trust policy {path}: not JSON ({exc})") from None
    return parse_policy(doc, path)


def parse_policy(doc: object, path: str) -> Policy:
    if not isinstance(doc, dict):
        raise UnsafeInput(f"trust policy {path}: not a JSON object")
    unknown = set(doc) - {"default", "scopes", "transports"}
    if unknown:
        raise UnsafeInput(f"trust policy {path}: unknown key {sorted(unknown)[0]!r}")
    base = os.path.dirname(os.path.abspath(path))
    if "default" not in doc:
        raise UnsafeInput(f'trust policy {path}: no "default" requirement')
    default = _requirements(doc["default"], f"{path}: default", base)
    scopes_doc = doc.get("scopes", {})
    if not isinstance(scopes_doc, dict):
        raise UnsafeInput(f'trust policy {path}: "scopes" is not an object')
    scopes = {str(k): _requirements(v, f"{path}: scope {k!r}", base) for k, v in scopes_doc.items()}
    return Policy(default, scopes, path)


def _requirements(obj: object, where: str, base: str) -> tuple[Requirement, ...]:
    items = obj if isinstance(obj, list) else [obj]
    if not items:
        raise UnsafeInput(f"trust policy {where}: an empty list of requirements")
    out = []
    for it in items:
        if not isinstance(it, dict):
            raise UnsafeInput(f"trust policy {where}: a requirement is not an object")
        kind = it.get("type")
        if kind in ("accept", "insecureAcceptAnything"):
            out.append(Requirement("accept"))
        elif kind == "reject":
            out.append(Requirement("reject"))
        elif kind == "signedBy":
            signers = it.get("allowedSigners")
            if not isinstance(signers, str) or not signers:
                raise UnsafeInput(f'trust policy {where}: signedBy needs "allowedSigners": FILE')
            principals = it.get("principals")
            if principals is not None and (
                not isinstance(principals, list)
                or not principals
                or not all(isinstance(p, str) and p for p in principals)
            ):
                raise UnsafeInput(f'trust policy {where}: "principals" must be a list of names')
            out.append(
                Requirement(
                    "signedBy",
                    os.path.join(base, os.path.expanduser(signers)),
                    tuple(principals) if principals else None,
                )
            )
        else:
            raise UnsafeInput(
                f"trust policy {where}: unknown requirement type {str(kind)[:40]!r} (accept, reject, signedBy)"
            )
    return tuple(out)


def _prefixes(scope: str, name: str) -> bool:
    if name == scope:
        return True
    if not name.startswith(scope):
        return False
    return scope.endswith(("/", ":", "@")) or name[len(scope)] in "/:@"


def select(policy: Policy, names: Iterable[str]) -> tuple[str | None, tuple[Requirement, ...]]:
    """(scope, requirements) for a manifest known by ``names`` (catalog names, registry references)."""
    best: str | None = None
    for n in names:
        for scope in policy.scopes:
            if _prefixes(scope, n) and (best is None or len(scope) > len(best)):
                best = scope
    return (best, policy.scopes[best]) if best is not None else (None, policy.default)


def evaluate(
    reqs: tuple[Requirement, ...],
    message: bytes,
    signatures: Iterable[bytes],
    *,
    what: str,
    scope: str | None,
    sha256: bytes | None = None,
) -> list[str]:
    """Check every requirement for a manifest's bytes and its stored signatures (binary SSHSIGs).

    Returns the principals that signed (for signedBy). Raises PolicyRefused (exit 4).
    """
    label = f"scope {scope!r}" if scope is not None else "the default policy"
    sigs = list(signatures)
    who: list[str] = []
    for req in reqs:
        if req.type == "accept":
            continue
        if req.type == "reject":
            raise PolicyRefused(f"{what}: refused by the trust policy ({label} rejects it)")
        assert req.allowed_signers is not None
        from castore.sign import allowed_signers

        signers = allowed_signers.load(req.allowed_signers)
        found = check_signed(signers, req.principals, message, sigs, sha256=sha256)
        if found is None:
            wanted = f" by {', '.join(req.principals)}" if req.principals else ""
            state = "has no signature" if not sigs else f"has no valid signature{wanted}"
            raise PolicyRefused(
                f"{what}: {state} that the trust policy accepts ({label} needs signedBy {req.allowed_signers}{wanted})"
            )
        who.append(found)
    return who


def check_signed(
    signers: list[allowed_signers.Signer],
    principals: tuple[str, ...] | list[str] | None,
    message: bytes,
    sigs: Iterable[bytes],
    *,
    sha256: bytes | None = None,
) -> str | None:
    """The principal of the first signature in ``sigs`` that verifies over ``message`` and is allowed.

    ``sha256``: the message's sha256, when the caller checked it already (see sshsig.verify_message).
    """
    from castore.sign import allowed_signers
    from castore.sign.sshsig import NAMESPACE, BadSignature, dearmor, parse_signature, verify_message

    now = time.time()
    for raw in sigs:
        try:
            sig = parse_signature(dearmor(raw))
            principal = allowed_signers.find(signers, sig.key, list(principals) if principals else None, NAMESPACE, now)
            if principal is None:
                continue
            verify_message(sig, message, sha256=sha256)
        except BadSignature:
            continue
        return principal
    return None


__all__ = [
    "ACCEPT_ALL",
    "Policy",
    "PolicyRefused",
    "Requirement",
    "check_signed",
    "evaluate",
    "load_policy",
    "parse_policy",
    "policy_path",
    "select",
]
