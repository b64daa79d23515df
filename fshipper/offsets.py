"""The producer's position: which file, and how far the server has acknowledged it.

Saved only after the server acknowledged the data, atomically. The `origin` is a
random name made when the state is first created; with the file number and byte
range it forms message identities that stay the same across restarts. `first`,
the file number and byte of the first message ever sent under this origin, is
recorded before that message is sent and travels in every message: a consumer
that has no record of the origin writes from there, and waits for it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import time
import uuid
from typing import Optional, Tuple

from .follower import FileRef
from .util import atomic_write


class StateError(Exception):
    pass


class PositionStore:
    def __init__(self, state_dir: str, name: str, min_interval: float = 0.2) -> None:
        self.path = os.path.join(state_dir, f"{name}.position")
        self.min_interval = min_interval
        self.origin = ""
        self.first: Optional[Tuple[int, int]] = None
        self._saved: Optional[Tuple[dict, int]] = None
        self._pending: Optional[Tuple[FileRef, int]] = None
        self._last_write = 0.0
        self.confirmed_at: Optional[float] = None  # when the server last confirmed data (for status)
        # Writes while lines flow run on a thread of their own, one at a time and
        # in order: two fsyncs block for a journal commit of the whole file
        # system (milliseconds, more while the server writes its store), and the
        # loop meanwhile reads and publishes. A write that failed raises at the next.
        self._writer: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._writing: Optional[concurrent.futures.Future] = None

    def load(self) -> Optional[Tuple[FileRef, int]]:
        """The saved (file, offset), or None on a first start; sets `origin`."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self.origin = uuid.uuid4().hex[:16]
            return None
        try:
            data = json.loads(raw)
            self.origin = str(data["origin"])
            self.confirmed_at = data.get("confirmed_at")
            if data.get("file") is None:
                return None
            ref, offset = FileRef.from_dict(data["file"]), int(data["offset"])
            # Saved by fshipper 0.1, which did not record it: everything before
            # the saved position was confirmed, so the chain can start there.
            first = data.get("first") or (ref.gen, offset)
            self.first = (int(first[0]), int(first[1]))
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StateError(f"{self.path}: unreadable position ({e}); move it away to start over "
                             "(the file is then shipped again from its beginning)") from None
        self._saved = (ref.to_dict(), offset)
        return ref, offset

    def update(self, ref: FileRef, offset: int) -> None:
        """Record an acknowledged position; written at most every `min_interval`
        (a crash re-sends at most that much, and the server drops the repeats)."""
        self._pending = (ref, offset)
        self.confirmed_at = time.time()
        self.flush_due()

    def confirmed(self) -> dict:
        """The latest confirmed position, as the position file has (or soon will have) it."""
        if self._pending is not None:
            return {"file": self._pending[0].to_dict(), "offset": self._pending[1]}
        if self._saved is not None:
            return {"file": self._saved[0], "offset": self._saved[1]}
        return {}

    @property
    def placed(self) -> bool:
        """Whether a file was ever recorded (else this is the first start's first file)."""
        return self._saved is not None

    def place(self, ref: FileRef, offset: int) -> None:
        """Record, before anything of it is sent, which file the first one is.

        Messages carry the file's number; a restart must give the same number to
        the same file. Without this, a crash before the first confirmation saved
        no file, and the next start numbered whatever file was there then (after
        a rotation, another one) 0 again: the consumer took its lines for repeats.
        It is also where this origin's chain begins (`first`).
        """
        self.first = (ref.gen, offset)
        self._write(ref, offset)

    @property
    def pending(self) -> bool:
        return self._pending is not None

    def flush_due(self) -> None:
        """Write the pending position in the background if its interval passed."""
        if self._writing is not None:
            if not self._writing.done():
                return
            self._finish_writing()
        if self._pending is not None and time.monotonic() - self._last_write >= self.min_interval:
            taken = self._take_pending()
            if taken is None:
                return
            ref, offset = taken
            if self._writer is None:
                self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="position")
            self._writing = self._writer.submit(atomic_write, self.path, self._record(ref, offset))
            self._wrote(ref, offset)

    def _finish_writing(self) -> None:
        """Wait for the background write, if any; raises what it raised."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def close(self) -> None:
        """Write what is pending and end the background writer."""
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.shutdown()
                self._writer = None

    def flush(self) -> None:
        self._finish_writing()
        if self._pending is None:
            if self._saved is None and not os.path.exists(self.path):
                self._write(None, 0)  # keep the origin even before the first line
            return
        taken = self._take_pending()
        if taken is not None:
            self._write(*taken)

    def _take_pending(self) -> Optional[Tuple[FileRef, int]]:
        """The pending position, now no longer pending; None if it is the one saved."""
        ref, offset = self._pending
        self._pending = None
        return None if self._saved == (ref.to_dict(), offset) else (ref, offset)

    def _record(self, ref: Optional[FileRef], offset: int) -> bytes:
        data = {"version": 1, "origin": self.origin, "file": ref.to_dict() if ref else None, "offset": offset,
                "first": self.first, "confirmed_at": self.confirmed_at}
        return json.dumps(data, sort_keys=True).encode() + b"\n"

    def _write(self, ref: Optional[FileRef], offset: int) -> None:
        self._finish_writing()
        atomic_write(self.path, self._record(ref, offset))
        self._wrote(ref, offset)

    def _wrote(self, ref: Optional[FileRef], offset: int) -> None:
        self._saved = (ref.to_dict(), offset) if ref else None
        self._last_write = time.monotonic()
