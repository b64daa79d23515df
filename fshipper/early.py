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
from typing import Callable, Dict, Iterable, List, Tuple

from nats.aio.msg import Msg

from . import streams
from .wire import Position

PROGRESS_EVERY = streams.ACK_WAIT / 4
HOLD_MAX = 8000          # messages; with COMMIT_MAX well below the consumer's max_ack_pending
HOLD_BYTES = 16 << 20    # payloads, headers and what a message costs in memory
OVERHEAD = 512           # bytes a held message costs beyond its payload and headers


def size(msg: Msg) -> int:
    """A message's payload and headers, in bytes."""
    headers = msg.headers or {}
    return len(msg.data) + sum(len(k) + len(v) for k, v in headers.items())


def _held_size(msg: Msg) -> int:
    return OVERHEAD + size(msg)


class EarlyHold:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        # producer ("host origin") -> stream sequence -> (position, message)
        self._chains: Dict[str, Dict[int, Tuple[Position, Msg]]] = {}
        # stream sequence -> when the server last heard of it (held first, or told in
        # progress); kept while a message is taken out and held again
        self._told: Dict[int, float] = {}
        self.count = 0
        self.bytes = 0

    def __len__(self) -> int:
        return self.count

    def hold(self, key: str, pos: Position, msg: Msg) -> bool:
        """Keep `msg` until its predecessor is written; False if there is no room."""
        seq = msg.metadata.sequence.stream
        chain = self._chains.get(key, {})
        older = chain.get(seq)
        grows = _held_size(msg) - (_held_size(older[1]) if older else 0)
        if older is None and (self.count >= HOLD_MAX or self.bytes + grows > HOLD_BYTES):
            return False
        self._chains[key] = chain
        chain[seq] = (pos, msg)
        if older is not None and older[1] is not msg:   # sent again: its ack_wait starts anew
            self._told[seq] = self.clock()
        self._told.setdefault(seq, self.clock())
        self.count += older is None
        self.bytes += grows
        return True

    def keys(self) -> Iterable[str]:
        return self._chains.keys()

    def chain(self, key: str) -> List[Msg]:
        """A producer's held messages in chain order (still held: see `drop`)."""
        held = sorted(self._chains.get(key, {}).values(), key=lambda e: (e[0].gen, e[0].start))
        return [m for _, m in held]

    def drop(self, key: str, msg: Msg) -> None:
        chain = self._chains[key]
        del chain[msg.metadata.sequence.stream]
        if not chain:
            del self._chains[key]
        self.count -= 1
        self.bytes -= _held_size(msg)

    def take_all(self) -> List[Msg]:
        msgs = [m for key in list(self._chains) for m in self.chain(key)]
        self._chains, self._told, self.count, self.bytes = {}, {}, 0, 0
        return msgs

    def due(self) -> List[Msg]:
        """Those to be told in progress now (each is then due again PROGRESS_EVERY later)."""
        now = self.clock()
        msgs, told = [], {}
        for chain in self._chains.values():
            for seq, (_, msg) in chain.items():
                told[seq] = self._told.get(seq, now)
                if now - told[seq] >= PROGRESS_EVERY:
                    told[seq] = now
                    msgs.append(msg)
        self._told = told   # forgets those no longer held
        return msgs
