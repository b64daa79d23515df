"""fshipper-consumer: pull each partition, write one file per host, acknowledge after.

Per batch: decide for every message (write, duplicate, early, refuse), write and
fsync the files, record positions and lengths in the ledger, and only then
acknowledge. A failure anywhere before the ledger is saved rolls the batch back
and asks for redelivery after a back-off; the partition waits meanwhile, so no
later line of a host is written ahead of an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import nats.errors
from nats.aio.msg import Msg

from . import connection, streams, wire
from .config import Settings
from .ledger import DUPLICATE, EARLY, WRITE, Ledger
from .puller import Puller
from .sink import Sink, safe_host
from .util import Backoff

log = logging.getLogger(__name__)

FETCH_WAIT = 1.0        # seconds a pull request waits for messages (also bounds stop latency)
FETCH_BYTES = 8 << 20   # bytes one pull request may bring: bounds memory whatever the message size
EXPIRE_EVERY = 3600.0   # seconds between sweeps of old output files
RECHECK_IDLE = 30.0     # seconds idle before checking the stream and consumer still exist


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.duplicates = 0
        self.refused = 0
        self.early = 0
        self.gaps = 0


class Consumer:
    def __init__(self, settings: Settings, ready: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.ready = ready
        self.sink = Sink(settings.shipper_output, settings.shipper_directory, settings.shipper_max_open_files,
                         settings.shipper_fsync == "batch", settings.shipper_keep_days)
        self.ledger = Ledger(settings.shipper_state_dir, settings.name)
        self.counters = Counters()
        self._early_since: Dict[str, float] = {}
        self._refused_logged: set = set()
        self._next_expiry = 0.0
        self._checked: Dict[int, float] = {}
        self.jetstream = settings.shipper_mode == "jetstream"
        self.nc = None

    async def run(self, stop: asyncio.Event) -> None:
        self.ledger.load()
        self.sink.restore(self.ledger.files)
        if self.settings.shipper_directory:
            os.makedirs(self.settings.shipper_directory, exist_ok=True)
        self.ready()
        try:
            connecting = asyncio.ensure_future(connection.connect(self.settings))
            done, _ = await asyncio.wait({connecting, asyncio.ensure_future(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if connecting not in done:
                connecting.cancel()
                return
            self.nc = connecting.result()
            if self.jetstream:
                await self._ensure_streams(self.nc.jetstream(), stop)
                serve = [self._serve(n, stop) for n in self.settings.shipper_read_partitions]
            else:
                serve = [self._serve_core(n, stop) for n in self.settings.shipper_read_partitions]
            await asyncio.gather(*serve)
        finally:
            self.sink.close()
            self.ledger.close()
            await connection.close(self.nc)
            c = self.counters
            log.info("stopped: %d messages, %d bytes written, %d duplicates skipped, %d refused, %d gaps",
                     c.messages, c.bytes, c.duplicates, c.refused, c.gaps)

    async def _ensure_streams(self, js, stop: asyncio.Event) -> None:
        backoff = Backoff(first=0.5, cap=15.0)
        while not stop.is_set():
            try:
                await streams.ensure(js, self.settings, self.settings.shipper_read_partitions)
                return
            except (nats.errors.Error, asyncio.TimeoutError) as e:
                delay = backoff.next_delay()
                log.warning("cannot set up stream %s yet (%s); retry in %.1fs",
                            self.settings.stream, str(e) or type(e).__name__, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass

    async def _serve(self, number: int, stop: asyncio.Event) -> None:
        name = streams.consumer_name(self.settings, number)
        puller = Puller(self.nc, self.settings.stream, name, self.settings.shipper_fetch_batch,
                        FETCH_BYTES, FETCH_WAIT)
        await puller.start()
        log.info("partition %d: consuming %s", number, name)
        backoff = Backoff(first=0.5, cap=30.0)
        try:
            while not stop.is_set():
                try:
                    msgs = await puller.fetch()
                except nats.errors.TimeoutError:
                    self._housekeeping()
                    await self._recheck(number)
                    continue
                except (nats.errors.Error, OSError) as e:
                    delay = backoff.next_delay()
                    log.warning("partition %d: fetch failed (%s); retry in %.1fs",
                                number, str(e) or type(e).__name__, delay)
                    await _sleep(delay, stop)
                    continue
                delay = await self._handle(number, msgs, backoff)
                if delay:
                    # Pause. What the open request still brings meanwhile goes back
                    # too: nothing later may be written ahead of the retried batch.
                    for msg in await puller.hold(delay, stop):
                        await _reply(msg.nak(delay=delay))
                self._housekeeping()
        finally:
            for msg in await puller.stop():  # arrived, not written: at once to the next consumer
                await _reply(msg.nak())

    async def _serve_core(self, number: int, stop: asyncio.Event) -> None:
        """Plain NATS, at most once (the original design): no acks, no redelivery."""
        subject = wire.partition_filter(self.settings.shipper_subject, number)
        sub = await self.nc.subscribe(subject, pending_msgs_limit=100_000, pending_bytes_limit=256 << 20)
        log.info("partition %d: subscribed to %s (core mode, at most once)", number, subject)
        backoff = Backoff(first=0.5, cap=30.0)
        while not stop.is_set():
            try:
                msgs = [await sub.next_msg(timeout=FETCH_WAIT)]
            except (asyncio.TimeoutError, nats.errors.TimeoutError):
                self._housekeeping()
                continue
            while len(msgs) < self.settings.shipper_fetch_batch and sub.pending_msgs:
                msgs.append(await sub.next_msg())
            delay = await self._handle(number, msgs, backoff)
            if delay:
                await _sleep(delay, stop)
        await sub.unsubscribe()

    async def _recheck(self, number: int) -> None:
        """Idle for a while: make sure the stream and this partition's consumer are
        still there (an operator may have deleted them); cheap and idempotent."""
        now = time.monotonic()
        if now - self._checked.get(number, now) < RECHECK_IDLE:
            self._checked.setdefault(number, now)
            return
        self._checked[number] = now
        try:
            await streams.ensure(self.nc.jetstream(), self.settings, [number], quiet=True)
        except (nats.errors.Error, asyncio.TimeoutError) as e:
            log.warning("partition %d: cannot check stream %s: %s", number, self.settings.stream, e)

    def _housekeeping(self) -> None:
        now = time.time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            self.sink.expire(now)

    async def _handle(self, number: int, msgs: List[Msg], backoff: Backoff) -> float:
        """Process one batch; returns how long the partition should pause (0: not)."""
        acks: List[Msg] = []
        early: List[Tuple[Msg, float]] = []
        refused: List[Msg] = []
        written_bytes = 0
        # Everything up to the ledger save runs without an await, so batches of
        # different partitions never interleave their writes.
        for msg in msgs:
            decision = self._decide(msg)
            if decision is None:
                refused.append(msg)
            elif decision == DUPLICATE:
                acks.append(msg)
            elif isinstance(decision, float):
                early.append((msg, decision))
            else:
                acks.append(msg)
                written_bytes += decision
        try:
            lengths = self.sink.write()
            self.ledger.commit(lengths)
        except OSError as e:
            self.sink.rollback()
            self.ledger.rollback()
            delay = backoff.next_delay()
            log.error("partition %d: cannot write (%s); paused, %d message(s) asked again in %.1fs",
                      number, e, len(msgs) - len(refused), delay)
            if self.jetstream:
                for msg in msgs:
                    if msg not in refused:
                        await _reply(msg.nak(delay=delay))
                for msg in refused:
                    await _reply(msg.term())
            return delay
        self.sink.confirm(lengths)
        if backoff.attempt:
            log.info("partition %d: writing again", number)
            backoff.reset()
        self.counters.bytes += written_bytes
        self.counters.messages += len(acks)
        if not self.jetstream:
            return 0.0
        for msg in acks:
            await _reply(msg.ack())
        for msg, delay in early:
            await _reply(msg.nak(delay=delay))
        for msg in refused:
            await _reply(msg.term())
        return 0.0

    def _decide(self, msg: Msg):
        """None: refuse; DUPLICATE; a float: early, ask again after that delay;
        an int: written (bytes queued for this batch)."""
        parsed = wire.parse_subject(self.settings.shipper_subject, msg.subject)
        if parsed is None or (self.settings.shipper_directory and not safe_host(parsed[1])):
            self._refuse(msg.subject)
            return None
        host = parsed[1]
        meta = msg.metadata if self.jetstream else None
        path = self.sink.path_for(host, meta.timestamp.timestamp() if meta else time.time())
        pos, more = wire.read_headers(msg.headers)
        payload, tail = msg.data, (b"" if more else b"\n")  # written as two parts: no copy
        if pos is None:  # a plain message (e.g. the original Go producer): no identity to check
            self.sink.append(path, payload, tail)
            return len(payload) + len(tail)
        verdict, skip = self.ledger.check(host, pos)
        key = f"{host} {pos.origin}"
        if verdict == DUPLICATE:
            self.counters.duplicates += 1
            return DUPLICATE
        if verdict == EARLY:
            first = self._early_since.setdefault(key, time.monotonic())
            if meta and time.monotonic() - first < self.settings.shipper_gap_timeout:
                self.counters.early += 1
                return min(0.2 * meta.num_delivered, 5.0)
            self.counters.gaps += 1
            log.error("host %s: the range before %s never came within %.0fs; writing on (a gap in the output)",
                      host, pos.encode(), self.settings.shipper_gap_timeout)
        self._early_since.pop(key, None)
        if skip:  # the start of this range was written already
            tail = tail[max(0, skip - len(payload)):]
            payload = memoryview(payload)[skip:]
        self.sink.append(path, payload, tail)
        self.ledger.advance(host, pos)
        return len(payload) + len(tail)

    def _refuse(self, subject: str) -> None:
        self.counters.refused += 1
        if subject not in self._refused_logged and len(self._refused_logged) < 1000:
            self._refused_logged.add(subject)
            log.warning("refused a message on %r: the host name is not a safe directory name "
                        "(refused so far: %d)", subject, self.counters.refused)


async def _reply(aw) -> None:
    """An ack/nak/term that cannot be sent is fine: the server redelivers later."""
    try:
        await aw
    except (nats.errors.Error, OSError) as e:
        log.debug("acknowledgement not sent: %s", e)


async def _sleep(delay: float, stop: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(stop.wait(), delay)
    except asyncio.TimeoutError:
        pass
