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


class Wake:
    """One wait that ends at whichever of its sources fires first: callers
    hand `set` to whatever should wake them (a future's done callback, a
    file's change) and check those sources before they wait. A line's path
    crosses a wait in each daemon; a wait made of tasks (asyncio.wait over
    wait_for over Event.wait) costs a turn of the loop per level there, this
    one a single turn."""

    def __init__(self) -> None:
        self._future: "Optional[asyncio.Future]" = None

    def set(self, *_) -> None:
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: Optional[float]) -> None:
        """Until `set` is called or `timeout` seconds (None: no limit) passed."""
        loop = asyncio.get_running_loop()
        self._future = future = loop.create_future()
        timer = loop.call_later(timeout, self.set) if timeout is not None else None
        try:
            await future
        finally:
            self._future = None
            if timer is not None:
                timer.cancel()

    async def watch(self, stop: asyncio.Event) -> None:
        """Wake every wait once `stop` is set (run as a task for the waits' lifetime)."""
        await stop.wait()
        self.set()


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
