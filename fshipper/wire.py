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

# Bounds of what a reader believes in Fshipper-Pos: the producer makes 16 hex
# characters of origin; numbers stay below 2**53 so they survive any JSON reader
# of the ledger. Numbers are plain ASCII digits (int() would take "+1", " 1",
# "1_0" or other scripts' digits).
MAX_ORIGIN = 64
_ORIGIN = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_ORIGIN, re.ASCII)
MAX_NUMBER = 2 ** 53
_NUMBER = re.compile(r"0|[1-9][0-9]{0,15}", re.ASCII)


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
        """The position in `text`, or None if it is not well formed: an origin of
        at most MAX_ORIGIN letters, digits, '_' or '-'; numbers below MAX_NUMBER;
        a non-empty range; pairs either both given or both "-"."""
        parts = text.split(" ")
        if len(parts) not in (6, 8) or not _ORIGIN.fullmatch(parts[0]):
            return None
        try:
            gen, start, end = (_number(p) for p in parts[1:4])
            prev_gen, prev_end = _pair(parts[4:6])
            first = _pair(parts[6:8]) if len(parts) == 8 else (None, None)
        except ValueError:
            return None
        if not start < end:
            return None
        first_at = None if first[0] is None else (first[0], first[1])
        return cls(parts[0], gen, start, end, prev_gen, prev_end, first_at)

    def begins_chain(self) -> bool:
        """Is this the producer's very first message (nothing of `origin` before it)?"""
        if self.first is not None:
            return (self.gen, self.start) == self.first
        return self.prev_gen is None and self.start == 0  # the six-field form


def _number(text: str) -> int:
    if not _NUMBER.fullmatch(text) or int(text) >= MAX_NUMBER:
        raise ValueError(text)
    return int(text)


def _pair(texts) -> Tuple[Optional[int], Optional[int]]:
    """Two numbers, or "- -" for none; one of each is not well formed."""
    if list(texts) == ["-", "-"]:
        return None, None
    return _number(texts[0]), _number(texts[1])


def headers(host: str, pos: Position, more: bool) -> dict:
    hdrs = {
        HDR_MSG_ID: f"{host}:{pos.origin}:{pos.gen}:{pos.start}:{pos.end}",
        HDR_POS: pos.encode(),
    }
    if more:
        hdrs[HDR_PART] = PART_MORE
    return hdrs


class HeaderError(ValueError):
    """A message's Fshipper headers are present but not to be believed."""


def read_headers(hdrs: Optional[Mapping[str, str]]) -> Tuple[Optional[Position], bool]:
    """(position, more) from a message's headers; (None, False) for a plain message
    (no Fshipper-Pos and no Fshipper-Part, as the original Go producer sends).
    Raises HeaderError for a Fshipper-Pos that is not well formed, an unknown
    Fshipper-Part, or a part without a position (nothing to join it by)."""
    if not hdrs:
        return None, False
    text, part = hdrs.get(HDR_POS), hdrs.get(HDR_PART)
    if part is not None and part != PART_MORE:
        raise HeaderError(f"{HDR_PART} {part[:40]!r} is not {PART_MORE!r}")
    if text is None:
        if part is not None:
            raise HeaderError(f"a part ({HDR_PART}) without {HDR_POS}")
        return None, False
    pos = Position.decode(text)
    if pos is None:
        raise HeaderError(f"{HDR_POS} {text[:80]!r} is not well formed")
    return pos, part is not None


def unframe(payload: bytes, more: bool) -> bytes:
    """The bytes a consumer appends to its file for one message."""
    return bytes(payload) if more else bytes(payload) + b"\n"
