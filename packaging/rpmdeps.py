"""Mark dependencies of a built .rpm as needed by its %pre scriptlet.

nfpm writes every dependency as a plain `Requires:` (it knows only
`Requires(post)`); `Requires(pre): shadow-utils` tells rpm and dnf that
useradd must be installed before %pre runs, which matters in a first
transaction (an image build) where both are installed together.  The flag
is one bit in the header's REQUIREFLAGS array: it is set in place, the
header's digests in the signature header are recomputed, and the package
is signed afterwards (build.py), as the old signature would not match.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

LEAD = 96
MAGIC = b"\x8e\xad\xe8\x01"
REQUIREFLAGS, REQUIRENAME = 1048, 1049
SIG_SHA1, SIG_SHA256, SIG_MD5 = 269, 273, 1004
SIG_SIGNATURES = (267, 268, 1002, 1005)   # DSA, RSA, PGP, GPG: stale after a change
RPMSENSE_SCRIPT_PRE = 1 << 9


class Header:
    """One header structure at `offset`: index entries and data store."""

    def __init__(self, data: bytearray, offset: int) -> None:
        if data[offset:offset + 4] != MAGIC:
            raise ValueError(f"no rpm header at byte {offset}")
        count, size = struct.unpack(">II", data[offset + 8:offset + 16])
        self.data, self.offset = data, offset
        self.store = offset + 16 + 16 * count
        self.end = self.store + size
        self.entries = {}
        for i in range(count):
            tag, kind, where, n = struct.unpack(">iiii", data[offset + 16 + 16 * i:offset + 32 + 16 * i])
            self.entries[tag] = (kind, self.store + where, n)

    def strings(self, tag: int) -> list[str]:
        _, where, n = self.entries[tag]
        out = []
        for _ in range(n):
            stop = self.data.index(0, where)
            out.append(self.data[where:stop].decode())
            where = stop + 1
        return out

    def bytes(self) -> bytes:
        return bytes(self.data[self.offset:self.end])


def require_in_pre(rpm: Path, names: tuple[str, ...]) -> None:
    data = bytearray(rpm.read_bytes())
    signature = Header(data, LEAD)
    if any(tag in signature.entries for tag in SIG_SIGNATURES):
        raise ValueError(f"{rpm}: already signed; mark the dependencies before signing")
    main = Header(data, signature.end + (-signature.end % 8))
    required = main.strings(REQUIRENAME)
    _, flags, _ = main.entries[REQUIREFLAGS]
    for name in names:
        if name not in required:
            raise ValueError(f"{rpm}: no Requires: {name} to mark as Requires(pre)")
        at = flags + 4 * required.index(name)
        (value,) = struct.unpack(">I", data[at:at + 4])
        data[at:at + 4] = struct.pack(">I", value | RPMSENSE_SCRIPT_PRE)
    header = main.bytes()
    for tag, digest in ((SIG_SHA1, hashlib.sha1(header).hexdigest().encode()),
                        (SIG_SHA256, hashlib.sha256(header).hexdigest().encode())):
        _, where, _ = signature.entries[tag]
        assert data[where + len(digest)] == 0
        data[where:where + len(digest)] = digest
    _, where, _ = signature.entries[SIG_MD5]
    data[where:where + 16] = hashlib.md5(bytes(data[main.offset:])).digest()
    rpm.write_bytes(bytes(data))
