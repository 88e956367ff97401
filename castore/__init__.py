"""castore: a content-addressed store of file trees, speaking containerd/continuity's manifest format.

The public library API (the ``continuity`` command is a thin layer over it)::

    import castore

    store = castore.Store.open("/var/lib/continuity")
    castore.ingest(store, "/src", name="web")
    castore.checkout(store, "web", "/srv/web", link="hardlink")
    assert not castore.verify(store, "web", "/srv/web")

Verbs (``castore.api``): ingest, checkout, apply, verify, build, diff, gc, fsck,
stats, du, load. Manifest types: ``castore.manifest``. Errors, each with its
exit code: ``castore.errors``. Every name is imported on first use (module
``__getattr__``), so ``import castore`` costs next to nothing.
"""

from __future__ import annotations

import importlib
import sys
import types

TYPE_CHECKING = False  # typing itself costs 3 ms to import: the constant, as typing.TYPE_CHECKING
if TYPE_CHECKING:
    from typing import Any

_VERBS = ("apply", "build", "checkout", "diff", "du", "fsck", "gc", "ingest", "load", "stats", "verify")
#: Verbs whose name is also a module or package of castore (``castore.checkout``, ``castore.gc``, ...):
#: that module is made callable (it forwards to ``castore.api``), so ``castore.gc(store)`` works whether
#: or not ``castore.gc.collect`` was imported first, and ``import castore.gc.collect`` keeps working.
_VERB_MODULES = frozenset({"apply", "build", "checkout", "fsck", "gc", "ingest", "stats", "verify"})
_TYPES = (
    "AdsEntry",
    "Chunk",
    "Device",
    "Directory",
    "Manifest",
    "NamedPipe",
    "RegularFile",
    "Resource",
    "Socket",
    "Symlink",
    "Whiteout",
)
_ERRORS = (
    "Aborted",
    "BadPassphrase",
    "BadSignature",
    "BlobNotFound",
    "Busy",
    "CastoreError",
    "CorruptManifest",
    "Differences",
    "IntegrityError",
    "InvalidManifest",
    "KeyError_",
    "MountUnavailable",
    "NotFound",
    "PolicyRefused",
    "RemoteError",
    "ResourceLimit",
    "SourceChanged",
    "StoreUnusable",
    "TarCorrupt",
    "TarUnsafe",
    "TreeChanged",
    "UnsafeInput",
)

#: public name -> the module that defines it
_HOME: dict[str, str] = {
    "Store": "castore.store",
    **dict.fromkeys(_VERBS, "castore.api"),
    **dict.fromkeys(_TYPES, "castore.manifest.model"),
    **dict.fromkeys(_ERRORS, "castore.errors"),
}

__all__ = sorted(["Store", "__version__", *_VERBS, *_TYPES, *_ERRORS])  # pinned by tests/test_api.py


class _VerbModule(types.ModuleType):
    """A verb's module (or package) that can be called as the verb: ``castore.checkout(store, ...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("castore.api")
        return getattr(api, self.__name__.split(".")[1])(*args, **kwargs)


class _Package(types.ModuleType):
    """The ``castore`` package: binding a verb's submodule makes it callable (see ``_VerbModule``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _VERB_MODULES and isinstance(value, types.ModuleType) and not isinstance(value, _VerbModule):
            value.__class__ = _VerbModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value: Any = version("continuity")
        except PackageNotFoundError:  # a source tree that was never installed
            value = "0+unknown"
    elif name in _VERB_MODULES:
        return importlib.import_module(f"castore.{name}")  # bound, made callable, by _Package.__setattr__
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        raise AttributeError(f"module 'castore' has no attribute {name!r}")
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


sys.modules[__name__].__class__ = _Package
