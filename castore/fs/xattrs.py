"""Extended attributes through an fd or a path never followed unless asked: read sorted, set with
security.capability last, and the kernel's refusal of one xattr made a clean UnsafeInput."""

from __future__ import annotations

import errno
import os

from castore.errors import UnsafeInput


def read_xattrs(target: int | str, *, follow: bool = False) -> tuple[tuple[str, bytes], ...]:
    """Every xattr of an fd or path (not followed unless ``follow``, e.g. a /proc/self/fd link), sorted."""
    try:
        if isinstance(target, int):
            names = os.listxattr(target)
        else:
            names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return ()
        raise
    if not names:
        return ()
    out = []
    for n in sorted(names):
        try:
            if isinstance(target, int):
                v = os.getxattr(target, n)
            else:
                v = os.getxattr(target, n, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue
            raise
        out.append((n, v))
    return tuple(out)


#: xattr namespaces Linux knows; others (e.g. macOS "com.apple.*") cannot be set here.
XATTR_NAMESPACES = ("user.", "trusted.", "security.", "system.")


def set_xattrs(target: int | str, xattrs: tuple[tuple[str, bytes], ...]) -> list[str]:
    """Set xattrs on an fd or (not followed) path; security.capability last.

    Returns the names skipped because Linux has no such namespace.
    """
    skipped = [n for n, _ in xattrs if not n.startswith(XATTR_NAMESPACES)]
    ordered = sorted(
        (kv for kv in xattrs if kv[0].startswith(XATTR_NAMESPACES)), key=lambda kv: kv[0] == "security.capability"
    )
    for n, v in ordered:
        set_xattr(target, n, v)
    return skipped


#: setxattr errnos that mean "this xattr can never be applied here" (a bad value, a namespace the
#: kernel refuses on this file type), as opposed to a full disk or quota (left to raise_if_full).
XATTR_REFUSED = frozenset(
    {errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.E2BIG, errno.ERANGE, errno.EACCES}
)


def set_xattr(target: int | str, name: str, value: bytes, *, follow: bool = False) -> None:
    """Set one xattr on an fd or path (not followed unless ``follow``); the kernel's refusal of the
    xattr itself is an UnsafeInput (exit 3) naming it, never a bare OSError."""
    try:
        if isinstance(target, int):
            os.setxattr(target, name, value)
        else:
            os.setxattr(target, name, value, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in XATTR_REFUSED:
            refused = UnsafeInput(f"xattr {name!r} ({len(value)} bytes) cannot be set: {os.strerror(exc.errno)}")
            refused.unnamed = True  # type: ignore[attr-defined]  # fs.named() puts the tree path in front
            raise refused from exc
        raise
