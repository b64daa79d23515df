"""<state>/<name>.status: what a daemon tells `fshipper status` besides its position.

Small JSON, replaced atomically, and only when what it says changes (a
problem starts or ends, a partition pauses or resumes), never per message:
the position file already records progress. Both daemons write it and
fshipper.health reads it; this module owns the format.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

from .util import atomic_write


def path_for(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, f"{name}.status")


def read(state_dir: str, name: str) -> Dict[str, Any]:
    """The last status written, or {} (never written, or unreadable)."""
    try:
        with open(path_for(state_dir, name), "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StatusFile:
    """Problems as `{"what": {"text": ..., "since": unix time}}` plus fixed facts."""

    def __init__(self, state_dir: str, name: str, **facts: Any) -> None:
        self.path = path_for(state_dir, name)
        self.facts = dict(facts, pid=os.getpid(), started=time.time())
        self.problems: Dict[str, Dict[str, Any]] = {}
        self.last_error: Optional[Dict[str, Any]] = None
        self._written: Optional[bytes] = None

    def problem(self, what: str, text: Optional[str]) -> None:
        """Set (text) or clear (None) one current problem; written if it changed."""
        current = self.problems.get(what)
        if text is None:
            if current is None:
                return
            del self.problems[what]
        else:
            if current is not None and current["text"] == text:
                return
            since = current["since"] if current is not None else time.time()
            self.problems[what] = {"text": text, "since": since}
            self.last_error = {"text": text, "at": time.time()}
        self.write()

    def error(self, text: str) -> None:
        """A passing error (a publish not confirmed): kept as the last error only.
        Written at most once per distinct text, so a repeating one costs nothing."""
        if self.last_error is None or self.last_error["text"] != text:
            self.last_error = {"text": text, "at": time.time()}
            self.write()

    def write(self) -> None:
        data = json.dumps(dict(self.facts, problems=self.problems, last_error=self.last_error),
                          sort_keys=True).encode() + b"\n"
        if data == self._written:
            return
        try:
            atomic_write(self.path, data)
        except OSError:
            return  # the state directory's own trouble shows elsewhere; status then says "unknown"
        self._written = data
