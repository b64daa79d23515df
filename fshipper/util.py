"""Small helpers shared by both daemons: atomic state files and back-off."""

from __future__ import annotations

import os
import random
import tempfile


def atomic_write(path: str, data: bytes, *, fsync: bool = True) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file.

    Temp file in the same directory, fsync, rename over, fsync the directory.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class Backoff:
    """Capped exponential back-off with full jitter; reset() after a success."""

    def __init__(self, first: float = 0.2, cap: float = 30.0) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.first * (2 ** self.attempt))
        self.attempt += 1
        # Half fixed, half random: never zero, still spreads a herd of clients.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
