"""Pulls messages from one durable JetStream consumer, for low latency and bounded memory.

nats-py's `fetch(n)` waits until n messages came or its timeout passed, which
holds a lone line for up to the whole timeout. This keeps one pull request open
(at most `batch` messages and `max_bytes` bytes, expiring after `wait`) on an
inbox of its own, and hands out whatever has arrived as soon as anything has.
The next request is sent as soon as the open one is used up, so the server
fills it while the caller writes. Only public nats-py calls and the documented
JetStream API subject are used.

With a claim (ownership.Claim) the requests pull in the partition's priority
group with this client's pin, each on a reply subject of its own so that the
server's answer to one request (408 ended, 423 another client is pinned) is
known to be about that request; messages not delivered under the pin are
dropped here, never handed out.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
from typing import Deque, List, Optional

from .ownership import Claim
from .util import Wake

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

STATUS = "Status"
HEARTBEAT = "100"


class Puller:
    def __init__(self, nc: Client, stream: str, consumer: str, batch: int, max_bytes: int, wait: float,
                 claim: Optional[Claim] = None) -> None:
        self.nc = nc
        self.claim = claim
        self.inbox = ""
        self.requests = 0
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.max_bytes = max_bytes
        self.wait = wait
        self.sub = None
        self.arrived: Deque[Msg] = collections.deque()
        self.wake = Wake()   # a message's arrival ends the wait in one turn of the loop
        self.owed = 0                 # messages the open request may still bring
        self.bytes_owed = 0
        self.expires_at = 0.0
        self.waiting = 0              # messages still in the stream after the last one handed out

    async def start(self) -> None:
        # A callback only queues: cheaper per message than next_msg(), which
        # makes a task and a timer for each one.
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(f"{self.inbox}.*", cb=self._arrive,
                                           pending_msgs_limit=0, pending_bytes_limit=0)

    async def _arrive(self, msg: Msg) -> None:
        self.arrived.append(msg)
        self.wake.set()

    async def _next(self, timeout: float) -> bool:
        """Wait until something arrived (True) or `timeout` passed (False)."""
        if not self.arrived:
            await self.wake.wait(timeout)
        return bool(self.arrived)

    async def stop(self) -> List[Msg]:
        """Unsubscribe; returns what had arrived and was not handed out (to give back)."""
        left = self._drain()
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except nats.errors.Error:
                pass
            self.sub = None
        return left

    def busy(self) -> bool:
        """Are more messages coming right now? Yes if some arrived and were not
        handed out yet, if the stream still holds more for this consumer (the
        server's count, sent with the last one handed out: a backlog), or if
        the open request has started to deliver and is not used up (a steady
        flow)."""
        return (any(_status(m) is None for m in self.arrived) or self.waiting > 0
                or (self._open() and self.owed < self.batch))

    def _reply(self) -> str:
        return f"{self.inbox}.{self.requests}"

    def _open(self) -> bool:
        return self.owed > 0 and self.bytes_owed > 0 and time.monotonic() < self.expires_at

    async def _request(self) -> None:
        request = {"batch": self.batch, "max_bytes": self.max_bytes, "expires": int(self.wait * 1e9)}
        self.requests += 1
        reply = self._reply()
        if self.claim is not None:
            request.update(self.claim.fields())
            self.claim.sent(reply, self.batch)
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=reply)
        self.owed, self.bytes_owed = self.batch, self.max_bytes
        self.expires_at = time.monotonic() + self.wait

    async def fetch(self, timeout: Optional[float] = None) -> List[Msg]:
        """Messages that arrived (at least one), or raises nats.errors.TimeoutError
        after `timeout` (default: the request's wait)."""
        msgs = self._drain()
        deadline = time.monotonic() + (self.wait if timeout is None else timeout)
        while not msgs:
            if not self._open():
                await self._request()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await self._next(remaining):
                raise nats.errors.TimeoutError
            msgs = self._drain()
        if not self._open():
            await self._request()  # the server fills the next one while the caller writes
        return msgs

    async def hold(self, seconds: float, stop: asyncio.Event) -> List[Msg]:
        """Wait `seconds` without asking for more; returns what the open request brought."""
        msgs: List[Msg] = []
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            await self._next(min(deadline - time.monotonic(), 0.25))
            msgs += self._drain()
        return msgs + self._drain()

    def _drain(self) -> List[Msg]:
        msgs: List[Msg] = []
        while self.arrived:
            msg = self.arrived.popleft()
            status = _status(msg)
            if status is None:
                self.owed -= 1
                self.bytes_owed -= len(msg.data) + len(msg.subject)
                if self.claim is None or self.claim.delivered(msg):
                    msgs.append(msg)
            elif status != HEARTBEAT:
                # 404/408 (request ended), 409 (conflict), 423 (another client is
                # pinned): that request is closed (if it is the open one)
                if msg.subject == self._reply():
                    self.owed = 0
                if self.claim is not None:
                    self.claim.status(msg.subject, status)
        if msgs:
            try:
                self.waiting = msgs[-1].metadata.num_pending
            except (nats.errors.Error, ValueError, IndexError):
                self.waiting = 0
        return msgs


def _status(msg: Msg) -> Optional[str]:
    """The status code of a server notice (heartbeat, request ended), None for a message."""
    return msg.headers.get(STATUS) if msg.headers else None
