"""Crash points for tests: a process dies at an exact step, as kill -9 would leave it.

FSHIPPER_FAILPOINT=<name>:<n> makes the n-th `reach(name)` kill this process
with SIGKILL (nothing flushed, nothing closed); <name>:<n>:exit ends it with
status 1 instead, as a daemon dying of an unexpected error does (nothing
flushed either). It is a test hook, not a
setting: read once from the environment at import, and without it `reach` is
one comparison. The daemons name their steps "consumer-batch" (a batch reaches
its handler), "consumer-write" (new files recorded, nothing written yet) and
"consumer-commit" (files synced, ledger not yet written).
"""

from __future__ import annotations

import os
import signal

_name, _, _rest = os.environ.get("FSHIPPER_FAILPOINT", "").partition(":")
_count, _, _action = _rest.partition(":")
_left = int(_count) if _count.isdigit() else 1


def reach(name: str) -> None:
    global _left
    if name != _name:
        return
    _left -= 1
    if _left <= 0:
        if _action == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
