"""xz and bzip2 tar streams, decoded from the standard library's lzma and bz2 with bounded memory.

``lzma.LZMAFile`` has no memory limit: an xz stream may declare a dictionary of
up to 1.5 GiB, which the decoder would allocate. Here the decoder is given a
limit (``XZ_MEMLIMIT``, 256 MiB: what ``xz -9`` needs is 65 MiB), beyond which
the stream is refused as corrupt input, and output is produced in pieces of
at most the size asked for (bz2's own decoder is bounded by design: 900 kB
blocks), so a small bomb never becomes a large buffer.
"""

from __future__ import annotations

import bz2
import io
import lzma
from typing import BinaryIO

from castore.tar.format import TarCorrupt as CorruptInput

XZ_MEMLIMIT = 256 << 20
PIECE = 1 << 20


class _Decoded(io.RawIOBase):
    """A readable raw stream over ``src`` through a one-shot decompressor object (multi-stream aware)."""

    def __init__(self, src: BinaryIO, kind: str) -> None:
        self.src, self.kind = src, kind
        self.dec = self._new()
        self.eof = False

    def _new(self) -> lzma.LZMADecompressor | bz2.BZ2Decompressor:
        if self.kind == "xz":
            return lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=XZ_MEMLIMIT)
        return bz2.BZ2Decompressor()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), PIECE)
        while not self.eof:
            try:
                if self.dec.eof:
                    rest = self.dec.unused_data
                    if not rest:
                        rest = self.src.read(PIECE)
                    if not rest:
                        self.eof = True
                        break
                    self.dec = self._new()  # concatenated streams (pbzip2, xz of several streams)
                    data = self.dec.decompress(rest, want)
                elif self.dec.needs_input:
                    chunk = self.src.read(PIECE)
                    if not chunk:
                        raise CorruptInput(f"truncated {self.kind} stream")
                    data = self.dec.decompress(chunk, want)
                else:
                    data = self.dec.decompress(b"", want)
            except (lzma.LZMAError, OSError, EOFError) as exc:
                if isinstance(exc, lzma.LZMAError) and "memory" in str(exc).lower():
                    raise CorruptInput(
                        f"xz stream needs more than {XZ_MEMLIMIT >> 20} MiB to decode; refused"
                    ) from None
                raise CorruptInput(f"corrupt {self.kind} stream: {exc}") from None
            if data:
                n = len(data)
                b[:n] = data
                return n
        return 0


def open_decoded(src: BinaryIO, kind: str) -> BinaryIO:
    """``kind`` is ``xz`` or ``bz2``; the result is a buffered reader of the decoded bytes."""
    return io.BufferedReader(_Decoded(src, kind), buffer_size=PIECE)
