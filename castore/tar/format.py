"""The tar format, both ways: 512-byte headers (ustar, GNU, v7), numbers
(octal and base-256), PAX extended records, and the AppleDouble format that
macOS puts in tars. Pure functions over bytes; no IO.

Used by ``castore.tar.importer`` (parse) and ``castore.tar.exporter`` (write).
Python's ``tarfile`` is deliberately not used for parsing: it reads PAX
headers and sparse maps of any declared size into memory, and cannot be
told to stop at a limit.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from castore.errors import TarCorrupt

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_SIZE = (1 << 63) - 1
MIN_TIME_NS, MAX_TIME_NS = -(1 << 63), (1 << 63) - 1  # what a manifest's mtime_ns (int64) holds
MAX_ID = (1 << 32) - 2  # a uid or gid; (uid_t)-1 is "no change" to chown, never an owner

# typeflags
REG, AREG, LNK, SYM, CHR, BLK, DIR, FIFO, CONT = b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7"
PAX, PAX_GLOBAL, PAX_SOLARIS = b"x", b"g", b"X"
GNU_LONGNAME, GNU_LONGLINK, GNU_SPARSE = b"L", b"K", b"S"
MAGIC_POSIX, MAGIC_GNU = b"ustar\x0000", b"ustar  \x00"


def _nts(field: bytes) -> bytes:
    """A NUL-terminated string field."""
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def parse_number(field: bytes) -> int:
    """An octal (NUL/space padded) or base-256 (GNU/star) header number.

    Base-256 (the high bit of the first byte set): the other bits of the
    field are a two's complement number, as GNU tar and Go's archive/tar read it.
    """
    if field and field[0] & 0x80:
        bits = 8 * len(field) - 1
        n = int.from_bytes(field, "big") & ((1 << bits) - 1)
        if field[0] & 0x40:
            n -= 1 << bits
        return n
    text = _nts(field).strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarCorrupt(f"invalid number field {field!r} in tar header") from None


def checksum_ok(block: bytes) -> bool:
    try:
        want = parse_number(block[148:156])
    except TarCorrupt:
        return False
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if want == unsigned:
        return True
    signed = sum(struct.unpack("148b", block[:148])) + 256 + sum(struct.unpack("356b", block[156:]))
    return want == signed


@dataclass(slots=True)
class Header:
    """The fields of one 512-byte header block (names as raw bytes)."""

    name: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    type: bytes
    linkname: bytes
    devmajor: int
    devminor: int
    gnu: bool
    sparse: list[tuple[int, int]]  # old GNU sparse structs in the header
    extended: bool
    realsize: int


def parse_header(block: bytes, offset: int) -> Header:
    """Decode one header block (not all-zero). Raises TarCorrupt."""
    if not checksum_ok(block):
        raise TarCorrupt(f"bad tar header checksum at offset {offset} (not a tar stream, or corrupt)")
    magic = block[257:265]
    gnu = magic == MAGIC_GNU
    name = _nts(block[0:100])
    typ = block[156:157]
    if magic[:6] == b"ustar\x00" and block[345] and typ not in (GNU_SPARSE,):
        name = _nts(block[345:500]) + b"/" + name
    sparse: list[tuple[int, int]] = []
    extended, realsize = False, 0
    if typ == GNU_SPARSE:
        for i in range(4):
            pos = 386 + 24 * i
            if not block[pos : pos + 24].strip(b"\0"):
                break
            sparse.append((parse_number(block[pos : pos + 12]), parse_number(block[pos + 12 : pos + 24])))
        extended = bool(block[482])
        realsize = parse_number(block[483:495])
    return Header(
        name=name,
        mode=parse_number(block[100:108]),
        uid=parse_number(block[108:116]),
        gid=parse_number(block[116:124]),
        size=parse_number(block[124:136]),
        mtime=parse_number(block[136:148]),
        type=typ,
        linkname=_nts(block[157:257]),
        devmajor=parse_number(block[329:337]),
        devminor=parse_number(block[337:345]),
        gnu=gnu,
        sparse=sparse,
        extended=extended,
        realsize=realsize,
    )


def parse_sparse_ext(block: bytes) -> tuple[list[tuple[int, int]], bool]:
    """An old-GNU sparse extension block: 21 (offset, numbytes) structs and the continue flag."""
    out = []
    for i in range(21):
        pos = 24 * i
        if not block[pos : pos + 24].strip(b"\0"):
            break
        out.append((parse_number(block[pos : pos + 12]), parse_number(block[pos + 12 : pos + 24])))
    return out, bool(block[504])


def parse_pax(data: bytes, offset: int) -> list[tuple[bytes, bytes]]:
    """The records ``LEN KEY=VALUE\\n`` of a PAX header body, in order."""
    out: list[tuple[bytes, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        if data[pos] == 0:  # padding after the last record
            break
        sp = data.find(b" ", pos, min(end, pos + 21))
        if sp < 0 or not data[pos:sp].isdigit():
            raise TarCorrupt(f"malformed PAX record at offset {offset + pos}")
        length = int(data[pos:sp])
        rec_end = pos + length
        if length < 5 or rec_end > end or data[rec_end - 1 : rec_end] != b"\n":
            raise TarCorrupt(f"PAX record at offset {offset + pos} has a wrong length")
        key, eq, value = data[sp + 1 : rec_end - 1].partition(b"=")
        if not eq or not key:
            raise TarCorrupt(f"malformed PAX record at offset {offset + pos}")
        out.append((key, value))
        pos = rec_end
    return out


def pax_int(key: bytes, value: bytes, lo: int = 0, hi: int = MAX_SIZE) -> int:
    """A PAX decimal integer within [lo, hi], else TarCorrupt."""
    text = value.strip()
    if not text or not (text.isdigit() or text[:1] == b"-" and text[1:].isdigit()):
        raise TarCorrupt(f"invalid PAX {key.decode(errors='replace')}={value[:40]!r}")
    n = int(text)
    if not lo <= n <= hi:
        raise TarCorrupt(f"PAX {key.decode(errors='replace')}={n} out of range")
    return n


def pax_time_ns(value: bytes) -> int:
    """A PAX time (``[-]SECONDS[.FRACTION]``) in nanoseconds; the fraction is truncated."""
    text = value.strip()
    neg = text.startswith(b"-")
    if neg:
        text = text[1:]
    sec, _, frac = text.partition(b".")
    if not sec.isdigit() or (frac and not frac.isdigit()) or len(sec) > 20:
        raise TarCorrupt(f"invalid PAX time {value[:40]!r}")
    ns = int(sec) * 10**9 + int((frac[:9] or b"0").ljust(9, b"0"))
    ns = -ns if neg else ns
    if not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise TarCorrupt(f"PAX time {value[:40]!r} out of range")
    return ns


def format_time_ns(ns: int) -> bytes:
    """The PAX form of a time in nanoseconds (shortest exact decimal)."""
    sign = "-" if ns < 0 else ""
    a = abs(ns)
    s = f"{sign}{a // 10**9}"
    if a % 10**9:
        s += "." + f"{a % 10**9:09d}".rstrip("0")
    return s.encode()


def pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record with its self-inclusive length prefix."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _octal(n: int, width: int) -> bytes:
    return b"%0*o" % (width - 1, n) + b"\0"


def fits_octal(n: int, width: int) -> bool:
    return 0 <= n < 8 ** (width - 1)


def build_header(
    *,
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typ: bytes,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    """A POSIX ustar header block; out-of-range numbers must already be in PAX (written as 0)."""

    def num(n: int, width: int) -> bytes:
        return _octal(n if fits_octal(n, width) else 0, width)

    b = bytearray(BLOCK)
    b[0:100] = name[:100].ljust(100, b"\0")
    b[100:108] = num(mode, 8)
    b[108:116] = num(uid, 8)
    b[116:124] = num(gid, 8)
    b[124:136] = num(size, 12)
    b[136:148] = num(mtime, 12)
    b[148:156] = b" " * 8
    b[156:157] = typ
    b[157:257] = linkname[:100].ljust(100, b"\0")
    b[257:265] = MAGIC_POSIX
    b[329:337] = num(devmajor, 8)
    b[337:345] = num(devminor, 8)
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def padding(size: int) -> int:
    """Bytes of zero padding after ``size`` bytes of member data."""
    return -size % BLOCK


# ---------------------------------------------------------------- AppleDouble

APPLEDOUBLE_MAGIC = 0x00051607
AD_RESOURCE_FORK, AD_FINDER_INFO = 2, 9


def parse_appledouble(data: bytes) -> list[tuple[str, bytes]]:
    """The macOS metadata in an AppleDouble file, as ``com.apple.*``-style xattrs.

    Entry 2 (resource fork) becomes ``com.apple.ResourceFork``, the first 32
    bytes of entry 9 ``com.apple.FinderInfo`` (unless all zero), and the
    extended attributes macOS stores after them (the ``ATTR`` block) keep
    their own names. Raises TarCorrupt on a malformed file.
    """
    if len(data) < 26 or struct.unpack(">I", data[:4])[0] != APPLEDOUBLE_MAGIC:
        raise TarCorrupt("not an AppleDouble file")
    (count,) = struct.unpack(">H", data[24:26])
    if 26 + 12 * count > len(data):
        raise TarCorrupt("AppleDouble entry table past the end")
    out: list[tuple[str, bytes]] = []
    for i in range(count):
        eid, off, length = struct.unpack(">III", data[26 + 12 * i : 38 + 12 * i])
        if off + length > len(data):
            raise TarCorrupt("AppleDouble entry past the end")
        body = data[off : off + length]
        if eid == AD_RESOURCE_FORK and length:
            out.append(("com.apple.ResourceFork", body))
        elif eid == AD_FINDER_INFO:
            if body[:32].strip(b"\0"):
                out.append(("com.apple.FinderInfo", body[:32]))
            out.extend(_attr_block(data, off + 32, off + length))
    return out


def _attr_block(data: bytes, start: int, end: int) -> list[tuple[str, bytes]]:
    # macOS copyfile: 2 bytes of padding, then "ATTR", debug tag, total size, data
    # start/length, 3 reserved words, flags (u16), count (u16), then the entries.
    pos = start + 2
    if end - pos < 36 or data[pos : pos + 4] != b"ATTR":
        return []
    (count,) = struct.unpack(">H", data[pos + 34 : pos + 36])
    pos += 36
    out = []
    for _ in range(count):
        if pos + 11 > end:
            raise TarCorrupt("AppleDouble attribute table past the end")
        off, length, _flags, nlen = struct.unpack(">IIHB", data[pos : pos + 11])
        name = data[pos + 11 : pos + 11 + nlen].rstrip(b"\0").decode("utf-8", "surrogateescape")
        if off + length > len(data) or not name:
            raise TarCorrupt("AppleDouble attribute past the end")
        out.append((name, data[off : off + length]))
        pos = (pos + 11 + nlen + 3) & ~3
    return out
