"""What fsck found (findings by severity) and what it was asked to check."""

from __future__ import annotations

from dataclasses import dataclass, field

from castore.errors import UnsafeInput
from castore.textsafe import quote, safe_line


@dataclass
class Finding:
    severity: str  # error | warning | info
    kind: str
    subject: str  # a digest or a path
    detail: str
    names: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    repaired: str = ""

    def line(self) -> str:
        out = f"{self.severity}: {self.kind}: {quote(self.subject)}: {self.detail}"
        if self.names:
            out += f"; names: {', '.join(map(quote, self.names))}"
        if self.paths:
            out += f"; paths: {', '.join(map(quote, self.paths))}"
        if self.repaired:
            out += f" [{self.repaired}]"
        return safe_line(out)


@dataclass
class FsckReport:
    findings: list[Finding] = field(default_factory=list)
    blobs: int = 0
    manifests: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    incomplete: list[str] = field(default_factory=list)  # names that lack content after repair

    @property
    def sound(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    def summary(self) -> str:
        state = "sound" if self.sound else "DAMAGED"
        out = (
            f"fsck: store {state}: {self.blobs} blobs, {self.manifests} manifests checked, "
            f"{self.bytes_read} bytes re-hashed in {self.seconds:.2f}s; {self.count('error')} errors, "
            f"{self.count('warning')} warnings, {self.count('info')} info"
        )
        if self.incomplete:
            out += f"; incomplete names (ingest the same content again to heal): {', '.join(self.incomplete)}"
        return out

    def as_json(self) -> dict[str, object]:
        return {
            "sound": self.sound,
            "blobs": self.blobs,
            "manifests": self.manifests,
            "bytes_read": self.bytes_read,
            "seconds": round(self.seconds, 3),
            "incomplete": self.incomplete,
            "findings": [f.__dict__ for f in self.findings],
        }


@dataclass
class FsckOptions:
    read_data: bool = False
    subset: tuple[int, int] | None = None  # (n, m): re-hash the n-th of m parts
    repair: bool = False


def parse_subset(text: str) -> tuple[int, int]:
    """``N/M`` with 1 <= N <= M (restic's --read-data-subset). Raises UnsafeInput."""
    n, sep, m = text.partition("/")
    try:
        a, b = int(n), int(m)
    except ValueError:
        a = b = 0
    if not sep or not 1 <= a <= b <= 1 << 20:
        raise UnsafeInput(f"invalid subset {text[:40]!r}: use N/M with 1 <= N <= M")
    return a, b
