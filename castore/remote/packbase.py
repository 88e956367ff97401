"""The packs a push may reuse: those of the artifact its tag names now, and of every ``--base``.

Each is read like a pull reads it (bounded manifest, checked index layers);
a pack is offered for reuse only when the registry still has it (HEAD). A
tag that does not exist yet, or names something that is not a packed
continuity tree, offers nothing; a ``--base`` that does not exist is an error.
"""

from __future__ import annotations

from collections.abc import Sequence

from castore.errors import IntegrityError, NotFound
from castore.remote.client import Registry
from castore.remote.oci import MAX_OCI_MANIFEST, Descriptor, parse_oci_manifest, split_layers
from castore.remote.packer import BasePack
from castore.remote.packio import Counter, read_index
from castore.remote.ref import Reference
from castore.remote.transfer import run_all

MAX_BASE_PACKS = 65536


def load_bases(reg: Registry, ref: Reference, bases: Sequence[Reference], tmp_dir: str) -> list[BasePack]:
    """The packs of the repository's artifacts named by ``ref``'s tag and ``bases`` (in that order, once each)."""
    out: list[BasePack] = []
    seen: set[str] = set()
    for r, explicit in [(ref, False)] + [(b, True) for b in bases]:
        if r.registry != ref.registry or r.repo != ref.repo:
            raise IntegrityError(
                f"--base {r} is not in {ref.registry}/{ref.repo}: packs are reused within one repository"
            )
        try:
            raw, _ = reg.get_manifest(r.reference, MAX_OCI_MANIFEST)
            _, layers = parse_oci_manifest(raw, source=str(r))
            packs, _ = split_layers(layers, source=str(r))
        except NotFound:
            if explicit:
                raise
            continue
        except IntegrityError:
            if explicit:
                raise
            continue  # the tag names something else: it is overwritten, nothing is reused
        todo = [(p, x) for p, x in packs if p.digest not in seen][: MAX_BASE_PACKS - len(out)]
        seen.update(p.digest for p, _ in todo)
        found: list[BasePack | None] = [None] * len(todo)

        def one(i: int, todo: list[tuple[Descriptor, Descriptor]] = todo, found: list[BasePack | None] = found) -> None:
            p, x = todo[i]
            if reg.has_blob(p.digest):
                found[i] = BasePack(p, x, read_index(reg, p, x, tmp_dir, Counter([])))

        run_all(range(len(todo)), one, jobs=4, abort=reg.abort)
        out += [b for b in found if b is not None]
    return out
