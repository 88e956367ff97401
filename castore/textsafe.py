"""Escaping for human-readable output: a name never breaks a line or reaches the terminal raw.

One convention everywhere (``ls``, ``list``, ``history``, ``diff``, ``verify``, ``du``, ``stats``,
fsck/gc reports, notes, warnings and error lines), close to GNU ``ls -b`` and git's quoting:

- ``\\t``, ``\\n``, ``\\r`` for those three; ``\\xNN`` for the other C0 controls and DEL (``\\x1b``);
- ``\\xNN`` for a byte that is not valid UTF-8 (names are kept as ``os.fsdecode`` surrogate escapes);
- ``\\uNNNN`` for a C1 control (U+0080-U+009F), a lone surrogate, and U+2028/U+2029 (line breaks);
- in a name (:func:`quote`) a backslash is doubled, so the escaped form is unambiguous.

So ``\\xNN`` always stands for one byte of the name, ``\\uNNNN`` for one character.
JSON output (:func:`json_text`) keeps its own escapes: ``\\uNNNN`` for every control character.
"""

from __future__ import annotations

import sys


def _table() -> dict[int, str]:
    t: dict[int, str] = {c: f"\\x{c:02x}" for c in range(0x20)}
    t.update({0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x7F: "\\x7f"})
    t.update({c: f"\\u{c:04x}" for c in range(0x80, 0xA0)})
    t.update({c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)})
    t.update({c: f"\\x{c - 0xDC00:02x}" for c in range(0xDC80, 0xDD00)})  # surrogateescape'd bytes
    t.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
    return t


_TABLES: list[dict[int, str]] = []  # [line, name]: built on first use (a 2,400-entry table: 1 ms of every start)


def _tables() -> list[dict[int, str]]:
    if not _TABLES:
        line = _table()
        _TABLES.extend((line, {**line, ord("\\"): "\\\\"}))
    return _TABLES


def _clean(s: str) -> bool:
    return s.isascii() and s.isprintable()


def quote(name: str) -> str:
    """A path, name or other user datum for one line of human-readable output."""
    if _clean(name) and "\\" not in name:
        return name
    return name.translate(_tables()[1])


def safe_line(msg: str) -> str:
    """A whole message (error, note, warning): controls escaped, backslashes kept as they are."""
    if _clean(msg):
        return msg
    return msg.translate(_tables()[0])


_JSON: dict[int, str] = {}  # filled on first use


def _json_table() -> dict[int, str]:
    if not _JSON:
        _JSON.update({c: f"\\u{c:04x}" for c in (0x7F, *range(0x80, 0xA0), *range(0xD800, 0xE000), 0x2028, 0x2029)})
    return _JSON


def json_text(obj: object, indent: int | None = 1) -> str:
    """``json.dumps`` whose output holds no raw DEL, C1 control, line separator or undecodable byte.

    These become ``\\uNNNN`` escapes (valid JSON, same value); a byte that is not UTF-8, kept as a
    surrogate escape, reads back in Python as the same surrogate (``os.fsencode`` gives the byte).
    """
    import json

    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    if text.isascii() and "\x7f" not in text:
        return text  # nothing to escape (the common case: no table built)
    return text.translate(_json_table())


def note(msg: str, *, prefix: str = "note") -> None:
    """One ``continuity: note: ...`` line on stderr."""
    print(f"continuity: {prefix}: {safe_line(msg)}", file=sys.stderr, flush=True)


def human_size(n: float, *, short: bool = False) -> str:
    """``n`` bytes in binary units: "1.5 MiB", or with ``short`` as ``du -h`` writes it ("1.5M")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            if short:
                return f"{int(n)}B" if unit == "B" else f"{n:.1f}{unit[0]}"
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
