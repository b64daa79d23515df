"""Messages that came before their predecessor, held until it comes.

A producer's messages form a chain (wire.Position). One whose predecessor is
not written yet is early: asked again (a nak with a delay), it comes back in
whatever order the server redelivers in, so a run of early messages — after a
restart, a takeover, a redelivery — moves on one delay at a time, each step
redelivering all the others again. Held here instead, it is written in the
batch that brings its predecessor, each producer's held messages in chain
order.

The server is told a held message is in progress (+WPI) every PROGRESS_EVERY,
well within ack_wait, so that it does not send it again meanwhile (if it does,
the newer copy replaces the older). Nothing here is durable: after a crash the
server sends the held messages again when their ack_wait ends. Bounded by
HOLD_MAX messages and HOLD_BYTES; beyond that an early message is asked again
as before.
"""

from __future__ import annotations

import time
from typing import Callable, Dict, Iterable, List

from nats.aio.msg import Msg

from . import streams
from .wire import Position

PROGRESS_EVERY = streams.ACK_WAIT / 3
HOLD_MAX = 8000          # messages; with COMMIT_MAX well below the consumer's max_ack_pending
HOLD_BYTES = 16 << 20    # payloads, headers and what a message costs in memory
OVERHEAD = 512           # bytes a held message costs beyond its payload and headers


def size(msg: Msg) -> int:
    headers = msg.headers or {}
    return OVERHEAD + len(msg.data) + sum(len(k) + len(v) for k, v in headers.items())


class EarlyHold:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # producer ("host origin") -> stream sequence -> [position, message, last told]
        self._chains: Dict[str, Dict[int, list]] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def hold(self, key: str, pos: Position, msg: Msg) -> bool:
        """Keep `msg` until its predecessor is written; False if there is no room."""
        seq = msg.metadata.sequence.stream
        chain = self._chains.get(key, {})
        older = chain.get(seq)
        grows = size(msg) - (size(older[1]) if older else 0)
        if older is None and (self.count >= HOLD_MAX or self.bytes + grows > HOLD_BYTES):
            return False
        self._chains[key] = chain
        chain[seq] = [pos, msg, self.clock()]
        self.count += older is None
        self.bytes += grows
        return True

    def keys(self) -> Iterable[str]:
        return self._chains.keys()

    def take(self, keys: Iterable[str]) -> List[Msg]:
        """The held messages of these producers, each producer's in chain order."""
        msgs: List[Msg] = []
        for key in keys:
            chain = self._chains.pop(key, None)
            if chain:
                held = sorted(chain.values(), key=lambda e: (e[0].gen, e[0].start))
                msgs += [m for _, m, _ in held]
                self.count -= len(held)
                self.bytes -= sum(size(m) for _, m, _ in held)
        return msgs

    def take_all(self) -> List[Msg]:
        return self.take(list(self._chains))

    def due(self) -> List[Msg]:
        """Those to be told in progress now (each is then due again PROGRESS_EVERY later)."""
        now = self.clock()
        msgs = []
        for chain in self._chains.values():
            for entry in chain.values():
                if now - entry[2] >= PROGRESS_EVERY:
                    entry[2] = now
                    msgs.append(entry[1])
        return msgs
