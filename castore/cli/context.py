"""The context of one command run: global options and the store, opened once (click-free)."""

from __future__ import annotations

import os

from castore.errors import NoStore

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up: castore/__init__.py)

if TYPE_CHECKING:
    from castore.store import Store

#: the store this command made (ingest, pull), announced on stderr when it succeeds
NEW_STORE: list[str] = []


class Ctx:
    def __init__(
        self, store_path: str | None, debug: bool, quiet: bool = False, verbose: int = 0, policy_path: str | None = None
    ) -> None:
        self.store_path = store_path
        self.debug = debug
        self.quiet = quiet  # -q: no progress, no notes; errors still print
        self.verbose = verbose  # -v: more detail on stderr (-vv: more)
        self.policy_path = policy_path  # --policy FILE (castore/sign/policy.py looks further)
        self._store: Store | None = None

    @property
    def open_store(self) -> Store | None:
        """The store, if this command opened it."""
        return self._store

    def writable_store(self, create: bool = False) -> Store:
        """The store, refused (ReadOnlyStore, with a hint) when it is read-only: for the verbs that write."""
        store = self.store(create=create)
        if store.readonly:
            from castore.store.readonly import refuse_write

            refuse_write(store.path)
        return store

    def store(self, create: bool = False) -> Store:
        """The store; a missing one is an error with a hint (``continuity init``), unless ``create``:
        the verbs that bring content in (ingest, pull, mount of a registry reference) make it, and say so."""
        if self._store is None:
            from castore.cli import phases  # noqa: PLC0415
            from castore.store import Store, default_store_path  # noqa: PLC0415

            path = self.store_path or default_store_path()
            new = not os.path.lexists(os.path.join(path, "config"))
            if new and not create:
                raise NoStore(
                    f"no store at {path}: run `continuity init` to make one (or check --store / CONTINUITY_STORE)"
                )
            phases.mark("before store")
            self._store = Store.open(path, create=create)
            phases.mark("store open")
            if new:  # said when the command succeeds (announce_new_store): a failure's stderr is its one error line
                NEW_STORE.append(os.path.abspath(path))
        return self._store

    def store_if_exists(self) -> Store | None:
        from castore.store import default_store_path  # noqa: PLC0415

        path = self.store_path or default_store_path()
        if not os.path.exists(os.path.join(path, "config")):
            return None
        return self.store(create=False)
