"""The trust policy as the verbs that materialise a tree check it (checkout, apply, mount)."""

from __future__ import annotations

from castore.cli.context import Ctx
from castore.sign.policy import load_policy
from castore.store import Store


def names_of(store: Store | None, ref: str, digest: str | None) -> list[str]:
    """The catalog names a MANIFEST argument reached its manifest by (none: a digest or a file)."""
    if store is None or digest is None:
        return []
    for cand in (ref, ref.split("@", 1)[0], ref.split("~", 1)[0]):
        if cand and store.get_tag(cand) is not None:
            return [cand]
    return []


def check_trust(obj: Ctx, ref: str, digest: str | None, store: Store | None) -> list[str]:
    """Refuse (PolicyRefused, exit 4) a manifest the trust policy does not accept; before anything is written."""
    policy = load_policy(obj.policy_path)
    if policy.accepts_all:
        return []
    from castore.store.signatures import enforce

    return enforce(
        store,
        policy,
        digest,
        names_of(store, ref, digest),
        what=f"manifest {digest or ref}",
        message=None if digest else b"",
    )
