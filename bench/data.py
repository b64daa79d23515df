"""Numbered test lines, and the check that an output holds exactly them.

Every line starts with its 9-digit number, as in rsyslog's own test suite,
so a wrong output can be told apart as a gap, a duplicate or a reordering.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, List, Optional, Union

ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_PAD = ALPHABET * 40          # long enough for 1000-byte lines from any offset
BLOCK = 8 << 20


def line(seq: int, size: int, tag: bytes = b"") -> bytes:
    """One line of exactly `size` bytes, newline included."""
    head = b"%09d %s" % (seq, tag)
    fill = size - 1 - len(head)
    if fill < 0:
        raise ValueError(f"line size {size} too small for {head!r}")
    start = seq % len(ALPHABET)
    return head + _PAD[start:start + fill] + b"\n"


def lines(first: int, count: int, size: int, tag: bytes = b"") -> bytes:
    return b"".join(line(seq, size, tag) for seq in range(first, first + count))


def write_lines(path: Path, first: int, count: int, size: int) -> None:
    """Write numbered lines to `path`, keeping memory small for large files."""
    step = 100_000
    with open(path, "wb") as f:
        for start in range(first, first + count, step):
            f.write(lines(start, min(step, first + count - start), size))


def cached_lines(cache: Path, count: int, size: int) -> Path:
    """A file of `count` lines of `size` bytes numbered from 1, made once."""
    path = cache / f"lines-{count}x{size}"
    if not path.exists() or path.stat().st_size != count * size:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        write_lines(tmp, 1, count, size)
        os.replace(tmp, path)
    return path


def output_files(host_dir: Path) -> List[Path]:
    """A host's output: every regular file in its directory, by name.

    A consumer may start a new file at a period boundary; the name order is
    the time order for the strftime patterns used here.
    """
    try:
        return sorted(p for p in host_dir.iterdir() if p.is_file())
    except FileNotFoundError:
        return []


def output_size(host_dir: Path) -> int:
    total = 0
    try:
        with os.scandir(host_dir) as it:
            for entry in it:
                if entry.is_file():
                    total += entry.stat().st_size
    except FileNotFoundError:
        pass
    return total


Expected = Union[Path, bytes]


def _open_expected(expected: Expected) -> BinaryIO:
    return open(expected, "rb") if isinstance(expected, Path) else io.BytesIO(expected)


def _blocks(streams: Iterable[BinaryIO]) -> Iterator[bytes]:
    for s in streams:
        with s:
            while True:
                block = s.read(BLOCK)
                if not block:
                    break
                yield block


def _digest(blocks: Iterator[bytes]) -> str:
    h = hashlib.sha1()
    for block in blocks:
        h.update(block)
    return h.hexdigest()


def verify(expected: Expected, host_dir: Path) -> Optional[str]:
    """None when the host's output is byte-identical to `expected`;
    otherwise a one-line account of what differs."""
    outputs = output_files(host_dir)
    out_size = sum(p.stat().st_size for p in outputs)
    exp_size = (expected.stat().st_size if isinstance(expected, Path)
                else len(expected))
    if out_size == exp_size and _digest(_blocks([_open_expected(expected)])) == \
            _digest(_blocks(open(p, "rb") for p in outputs)):
        return None
    return f"{host_dir}: {out_size} bytes, expected {exp_size}; " + \
        diagnose(expected, outputs)


def _numbered(blocks: Iterator[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in blocks:
        parts = (rest + block).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest + b"  (no final newline)"


def diagnose(expected: Expected, outputs: List[Path]) -> str:
    """Count lines, then name the first difference and any gaps/duplicates."""
    exp = _numbered(_blocks([_open_expected(expected)]))
    got = _numbered(_blocks(open(p, "rb") for p in outputs))
    n_exp = n_got = dups = 0
    first_diff = None
    seen_max = -1
    for e in exp:
        g = next(got, None)
        n_exp += 1
        if g is None:
            continue
        n_got += 1
        if first_diff is None and g != e:
            first_diff = f"line {n_got}: got {g[:40]!r}, expected {e[:40]!r}"
        seq = int(g[:9]) if g[:9].isdigit() else -1
        if 0 <= seq <= seen_max:
            dups += 1
        seen_max = max(seen_max, seq)
    n_got += sum(1 for _ in got)
    return (f"{n_got} lines, expected {n_exp}; {dups} out of order or "
            f"duplicated; first difference: {first_diff or 'none in common part'}")


# -- fan-in: many simulated hosts, each with its own numbered lines --------

def host_name(index: int) -> str:
    return f"host{index:04d}"


def host_tag(index: int) -> bytes:
    return b"h%04d " % index


def host_lines(index: int, count: int, size: int) -> bytes:
    """What host `index` publishes in the fan-in, and so its expected output."""
    return lines(1, count, size, host_tag(index))


def fanin_messages(hosts: int, lines_per_host: int, size: int,
                   per_message: int) -> Iterator[tuple]:
    """(host index, lines) in publishing order: hosts take turns, each turn
    carrying `per_message` consecutive lines of one host."""
    for first in range(1, lines_per_host + 1, per_message):
        n = min(per_message, lines_per_host + 1 - first)
        for h in range(1, hosts + 1):
            yield h, lines(first, n, size, host_tag(h))
