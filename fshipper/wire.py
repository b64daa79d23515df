"""The wire format, shared by producer and consumer: this module is the contract.

- Subject: <prefix>.p<N>.<host>, N = FNV-1a 32-bit of the host bytes mod partitions.
- Payload: complete lines joined by b"\\n" without the final newline, bytes as in
  the file. A consumer writes payload + b"\\n". A message from the original Go
  producer (one line, no headers) is valid input.
- Headers (all optional for a reader):
  Nats-Msg-Id    <host>:<origin>:<gen>:<start>:<end>, stable across restarts, so
                 JetStream drops a re-publish inside its duplicate window.
  Fshipper-Pos   "<origin> <gen> <start> <end> <prev_gen> <prev_end> <first_gen> <first_start>":
                 the byte range [start, end) of file number <gen> of the producer
                 <origin>; the position the producer sent before this file ("- -"
                 if none); and where the producer's first message began, the start
                 of its chain. The consumer uses it to write each range exactly
                 once: a producer it has no record of is written from the start of
                 its chain, never from a later message that overtook the first.
                 The six-field form of fshipper 0.1 is still read (its chain is
                 taken to start at the first file's byte 0).
  Fshipper-Part  "more": the payload is part of a line that continues in the next
                 message (a line longer than one message); no newline after it.
- Inboxes (where replies come back): a producer's are under _INBOX_host_<host as one
  token>, the consumer's under _INBOX_consumer (both overridable with
  NATS_INBOX_PREFIX), so per-host permissions can allow a host its own replies only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

FNV_OFFSET = 2166136261
FNV_PRIME = 16777619

INBOX_HOST = "_INBOX_host_"
INBOX_CONSUMER = "_INBOX_consumer"
_TOKEN_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_POS = "Fshipper-Pos"
HDR_PART = "Fshipper-Part"
PART_MORE = "more"


# A host name is subject tokens here and a directory name on the consumer:
# ASCII labels (no look-alike letters), none starting with "-" or "." (no
# option or hidden file), no "/" or ".." (nothing that leaves the directory).
# The consumer refuses any other host's messages; the producer refuses to
# start with one, so what it sends is never refused.
_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]*"
_SAFE_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_HOST = 253
HOST_RULE = (f"a host name of ASCII letters, digits, '_' and '-' in labels joined by '.', "
             f"no label starting with '-', at most {MAX_HOST} characters")


def safe_host(host: str) -> bool:
    """A plain DNS-like label sequence: nothing that could leave the directory."""
    return len(host) <= MAX_HOST and _SAFE_HOST.fullmatch(host) is not None


def fnv1a32(data: bytes) -> int:
    h = FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return h


def partition(host: str, partitions: int) -> int:
    if partitions <= 0:
        return 0
    return fnv1a32(host.encode("utf-8", "surrogateescape")) % partitions


def subject(prefix: str, host: str, partitions: int) -> str:
    return f"{prefix}.p{partition(host, partitions)}.{host}"


def host_token(host: str) -> str:
    """The host as one subject token, so that no host's inbox prefix is a prefix of
    another's (with dots kept, `_INBOX_host_web1.>` would cover web1.example.net's).
    Each '.' becomes '_' and every other byte outside letters, digits and '-' becomes
    ~XX: web1.example.net -> web1_example_net, a_b -> a~5Fb. Reversible, so two
    hosts never share a token."""
    out = []
    for byte in host.encode("utf-8", "surrogateescape"):
        if byte in _TOKEN_SAFE:
            out.append(chr(byte))
        elif byte == 0x2E:
            out.append("_")
        else:
            out.append(f"~{byte:02X}")
    return "".join(out)


def inbox_prefix(host: Optional[str]) -> str:
    """The default NATS_INBOX_PREFIX: a producer's from its host, else the consumer's."""
    return INBOX_HOST + host_token(host) if host else INBOX_CONSUMER


def partition_filter(prefix: str, number: int) -> str:
    return f"{prefix}.p{number}.>"


def parse_subject(prefix: str, subject_: str) -> Optional[Tuple[int, str]]:
    """(partition, host) of a message subject, or None if it is not ours."""
    head = prefix + ".p"
    if not subject_.startswith(head):
        return None
    number, dot, host = subject_[len(head):].partition(".")
    if not dot or not number.isdigit() or not host:
        return None
    return int(number), host


@dataclass(frozen=True)
class Position:
    origin: str
    gen: int
    start: int
    end: int
    prev_gen: Optional[int] = None
    prev_end: Optional[int] = None
    first: Optional[Tuple[int, int]] = None  # (gen, start) of the producer's first message

    def encode(self) -> str:
        prev = "- -" if self.prev_gen is None else f"{self.prev_gen} {self.prev_end}"
        first = "- -" if self.first is None else f"{self.first[0]} {self.first[1]}"
        return f"{self.origin} {self.gen} {self.start} {self.end} {prev} {first}"

    @classmethod
    def decode(cls, text: str) -> Optional["Position"]:
        parts = text.split()
        if len(parts) not in (6, 8):
            return None
        try:
            gen, start, end = int(parts[1]), int(parts[2]), int(parts[3])
            prev_gen = None if parts[4] == "-" else int(parts[4])
            prev_end = None if parts[5] == "-" else int(parts[5])
            first = None if len(parts) == 6 or parts[6] == "-" else (int(parts[6]), int(parts[7]))
        except ValueError:
            return None
        if not (0 <= start < end) or gen < 0:
            return None
        return cls(parts[0], gen, start, end, prev_gen, prev_end, first)

    def begins_chain(self) -> bool:
        """Is this the producer's very first message (nothing of `origin` before it)?"""
        if self.first is not None:
            return (self.gen, self.start) == self.first
        return self.prev_gen is None and self.start == 0  # the six-field form


def headers(host: str, pos: Position, more: bool) -> dict:
    hdrs = {
        HDR_MSG_ID: f"{host}:{pos.origin}:{pos.gen}:{pos.start}:{pos.end}",
        HDR_POS: pos.encode(),
    }
    if more:
        hdrs[HDR_PART] = PART_MORE
    return hdrs


def read_headers(hdrs: Optional[Mapping[str, str]]) -> Tuple[Optional[Position], bool]:
    """(position, more) from a message's headers; (None, False) for a plain message."""
    if not hdrs:
        return None, False
    text = hdrs.get(HDR_POS)
    pos = Position.decode(text) if text else None
    return pos, hdrs.get(HDR_PART) == PART_MORE


def unframe(payload: bytes, more: bool) -> bytes:
    """The bytes a consumer appends to its file for one message."""
    return bytes(payload) if more else bytes(payload) + b"\n"
