"""Go ``os.FileMode`` bits, as upstream continuity writes them in ``mode``."""

from __future__ import annotations

MODE_DIR = 1 << 31
MODE_APPEND = 1 << 30
MODE_EXCLUSIVE = 1 << 29
MODE_TEMPORARY = 1 << 28
MODE_SYMLINK = 1 << 27
MODE_DEVICE = 1 << 26
MODE_NAMED_PIPE = 1 << 25
MODE_SOCKET = 1 << 24
MODE_SETUID = 1 << 23
MODE_SETGID = 1 << 22
MODE_CHAR_DEVICE = 1 << 21
MODE_STICKY = 1 << 20
MODE_IRREGULAR = 1 << 19

TYPE_BITS = MODE_DIR | MODE_SYMLINK | MODE_DEVICE | MODE_NAMED_PIPE | MODE_SOCKET | MODE_CHAR_DEVICE
KNOWN_BITS = TYPE_BITS | MODE_SETUID | MODE_SETGID | MODE_STICKY | 0o777


def perm_to_go(perm: int) -> int:
    """POSIX permission bits (with 0o7000 specials) to Go FileMode bits."""
    go = perm & 0o777
    if perm & 0o4000:
        go |= MODE_SETUID
    if perm & 0o2000:
        go |= MODE_SETGID
    if perm & 0o1000:
        go |= MODE_STICKY
    return go


def go_to_perm(go: int) -> int:
    """Go FileMode bits to POSIX permission bits (with 0o7000 specials)."""
    perm = go & 0o777
    if go & MODE_SETUID:
        perm |= 0o4000
    if go & MODE_SETGID:
        perm |= 0o2000
    if go & MODE_STICKY:
        perm |= 0o1000
    return perm
