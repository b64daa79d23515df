"""Pulls messages from one durable JetStream consumer, for low latency and bounded memory.

nats-py's `fetch(n)` waits until n messages came or its timeout passed, which
holds a lone line for up to the whole timeout. This keeps one pull request open
(at most `batch` messages and `max_bytes` bytes, expiring after `wait`) on an
inbox of its own, and hands out whatever has arrived as soon as anything has.
The next request is sent as soon as the open one is used up, so the server
fills it while the caller writes. Only public nats-py calls and the documented
JetStream API subject are used.
"""

from __future__ import annotations

import json
import time
from typing import List

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

STATUS = "Status"
HEARTBEAT = "100"


class Puller:
    def __init__(self, nc: Client, stream: str, consumer: str, batch: int, max_bytes: int, wait: float) -> None:
        self.nc = nc
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self.batch = batch
        self.max_bytes = max_bytes
        self.wait = wait
        self.sub = None
        self.owed = 0                 # messages the open request may still bring
        self.bytes_owed = 0
        self.expires_at = 0.0

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.nc.new_inbox(), pending_msgs_limit=0, pending_bytes_limit=0)

    async def stop(self) -> List[Msg]:
        """Unsubscribe; returns what had arrived and was not handed out (to give back)."""
        left = await self._drain() if self.sub is not None else []
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except nats.errors.Error:
                pass
            self.sub = None
        return left

    def _open(self) -> bool:
        return self.owed > 0 and self.bytes_owed > 0 and time.monotonic() < self.expires_at

    async def _request(self) -> None:
        request = {"batch": self.batch, "max_bytes": self.max_bytes, "expires": int(self.wait * 1e9)}
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self.sub.subject)
        self.owed, self.bytes_owed = self.batch, self.max_bytes
        self.expires_at = time.monotonic() + self.wait

    async def fetch(self) -> List[Msg]:
        """Messages that arrived (at least one), or raises nats.errors.TimeoutError."""
        msgs = await self._drain()
        deadline = time.monotonic() + self.wait
        while not msgs:
            if not self._open():
                await self._request()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise nats.errors.TimeoutError
            msgs = self._take(await self.sub.next_msg(timeout=remaining)) + await self._drain()
        if not self._open():
            await self._request()  # the server fills the next one while the caller writes
        return msgs

    async def hold(self, seconds: float, stop) -> List[Msg]:
        """Wait `seconds` without asking for more; returns what the open request brought."""
        msgs: List[Msg] = []
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msgs += self._take(await self.sub.next_msg(timeout=min(remaining, 0.25)))
            except nats.errors.TimeoutError:
                pass
        return msgs + await self._drain()

    async def _drain(self) -> List[Msg]:
        msgs: List[Msg] = []
        while self.sub.pending_msgs:
            msgs += self._take(await self.sub.next_msg(timeout=None))
        return msgs

    def _take(self, msg: Msg) -> List[Msg]:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self.owed -= 1
            self.bytes_owed -= len(msg.data) + len(msg.subject)
            return [msg]
        if status != HEARTBEAT:
            self.owed = 0  # 404/408 (request ended), 409 (conflict): the request is closed
        return []
