"""Small helpers shared by both daemons: atomic state files, waiting, back-off."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
from typing import Awaitable, Optional


def fsync_directory(directory: str) -> None:
    """Flush a directory's entries (a new or renamed file in it)."""
    fd = os.open(directory or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file.

    Temp file in the same directory, fsync, rename over, fsync the directory.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_directory(directory)


async def first(aw: Awaitable, stop: asyncio.Event, timeout: Optional[float]) -> bool:
    """Wait for `aw` (shielded), `stop` or the timeout; True if `aw` finished."""
    task = asyncio.ensure_future(aw)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    quiet(task)  # the caller reads the outcome from `aw`
    return task.done()


def quiet(future: "asyncio.Future") -> None:
    """Mark `future`'s exception as seen, now or when it ends: its outcome is
    read elsewhere (the future it shields), and asyncio logs an exception
    nobody retrieved as an error."""
    def retrieve(f: "asyncio.Future") -> None:
        if not f.cancelled():
            f.exception()
    if future.done():
        retrieve(future)
    else:
        future.add_done_callback(retrieve)


async def sleep(delay: float, stop: asyncio.Event) -> None:
    """Sleep `delay` seconds, or less if `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except asyncio.TimeoutError:
        pass


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
