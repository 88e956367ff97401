"""packfmt.BatchEncoder: compression attempts skipped in runs of incompressible blobs, deterministically,
and every entry it writes decodes to its blob (pure: no registry)."""

from __future__ import annotations

import hashlib
import random

from castore.remote.packfmt import (
    RAW,
    SKIP_AFTER,
    SKIP_EVERY,
    ZSTD,
    BatchEncoder,
    Entry,
    compressor,
    decode_entry,
    encode_entry,
)


def _blobs(seed: int = 3) -> list[bytes]:
    rng = random.Random(seed)
    rand = [rng.randbytes(rng.randrange(200, 3000)) for _ in range(40)]
    text = [(f"line {i} of a text file\n" * rng.randrange(20, 80)).encode() for i in range(12)]
    return rand + text + rand[:5] + text[:3]


def test_runs_of_incompressible_blobs_skip_most_attempts_and_output_is_deterministic() -> None:
    calls = []

    class Counting:
        def __init__(self) -> None:
            self.real = compressor()

        def compress(self, data: bytes) -> bytes:
            calls.append(len(data))
            return self.real.compress(data)

    blobs = _blobs()
    enc = BatchEncoder(Counting())  # type: ignore[arg-type]
    got = [enc(b) for b in blobs]
    # 40 random blobs: the first SKIP_AFTER tried, then one in SKIP_EVERY
    tried_random = SKIP_AFTER + len([m for m in range(SKIP_AFTER, 40) if m % SKIP_EVERY == 0])
    assert len(calls) < 40 and len(calls) >= tried_random
    assert all(c == RAW for _, c in got[:40])
    # the text after the run: compressed from the first attempt on (the run ends there)
    first_text = next(i for i in range(40, 52) if got[i][1] == ZSTD)
    assert all(c == ZSTD for _, c in got[first_text:52])
    assert first_text - 40 < SKIP_EVERY
    again = BatchEncoder(compressor())
    assert [again(b) for b in blobs] == got  # a new encoder per batch: the same bytes
    for b, (stored, comp) in zip(blobs, got, strict=True):
        e = Entry("sha256:" + hashlib.sha256(b).hexdigest(), 0, len(stored), len(b), comp)
        assert decode_entry(stored, e, "test") == b


def test_compressible_blobs_are_compressed_as_by_encode_entry() -> None:
    text = [(f"config value {i}\n" * 50).encode() for i in range(30)]
    enc = BatchEncoder(compressor())
    assert [enc(t) for t in text] == [encode_entry(t, compressor()) for t in text]
