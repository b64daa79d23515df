"""fshipper-consumer: pull each partition, write one file per host, acknowledge after.

Per batch: decide for every message (write, duplicate, early, refuse), record
the length of any file not written before, write and fsync the files, record
positions and lengths in the ledger, and only then acknowledge. A failure anywhere before the ledger is saved rolls the batch back
and asks for redelivery after a back-off; the partition waits meanwhile, so no
later line of a host is written ahead of an earlier one.

With failover (ownership.py) each partition is served by a Consumer of its
own, with the partition's ledger on the shared storage, and only while it owns
the partition: its state is loaded when it becomes the owner and forgotten,
without touching any file, when it stops being one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import nats.errors
from nats.aio.msg import Msg

from . import connection, failpoint, ownership, streams, wire
from .config import Settings
from .daemon import DaemonError
from .ledger import DUPLICATE, EARLY, Ledger, LedgerError
from .ownership import Claim, FencedError
from .puller import Puller
from .sink import Sink
from .util import Backoff, first, sleep

log = logging.getLogger(__name__)

FETCH_WAIT = 1.0        # seconds a pull request waits for messages (also bounds stop latency)
FETCH_BYTES = 16 << 20   # bytes one pull request may bring: bounds memory whatever the message size
EXPIRE_EVERY = 3600.0   # seconds between sweeps of old output files
RECHECK_IDLE = 30.0     # seconds idle before checking the stream and consumer still exist
COMMIT_EVERY = 1.0      # seconds a busy consumer may gather batches before one commit
COMMIT_MAX = 10000      # messages gathered at most (well below the consumer's max_ack_pending)


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.duplicates = 0
        self.refused = 0
        self.early = 0
        self.gaps = 0
        self.misplaced = 0

    def add(self, other: "Counters") -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class Consumer:
    def __init__(self, settings: Settings, ready: Callable[[], None] = lambda: None,
                 claim: Optional[Claim] = None, partition: int = 0, max_open: int = 0) -> None:
        self.settings = settings
        self.ready = ready
        self.claim = claim     # None: this process serves its partitions alone
        self._epoch: Optional[int] = None   # the claim's epoch the state was loaded under
        fence = claim.check if claim else None
        self.sink = Sink(settings.shipper_output, settings.shipper_directory,
                         max_open or settings.shipper_max_open_files,
                         settings.shipper_fsync == "batch", settings.shipper_keep_days, fence)
        if claim is None:
            self.ledger = Ledger(settings.shipper_state_dir, settings.name)
        else:
            self.ledger = Ledger(ownership.ledger_directory(settings),
                                 streams.consumer_name(settings, partition), fence)
        # A host's partition, now and (while resharding) before.
        self._counts = {settings.shipper_partitions}
        if settings.shipper_partitions_before is not None:
            self._counts.add(settings.shipper_partitions_before)
        self.counters = Counters()
        self._early_since: Dict[str, float] = {}
        self._refused_logged: set = set()
        self._next_expiry = 0.0
        self._checked: Dict[int, float] = {}
        self._uncommitted: List[str] = []   # reply subjects of written messages, to acknowledge
        self._gathered_since = 0.0          # when the first of them was written
        self.jetstream = settings.shipper_mode == "jetstream"
        self.nc = None

    def open_state(self) -> None:
        """Load the ledger and cut every file back to what it records."""
        self.ledger.load()
        files = self.ledger.files
        if self.claim is not None:
            files = ownership.last_written_here(self.ledger, files)
        self.sink.restore(files)
        self.sink.reserve_descriptors()
        if self.settings.shipper_directory:
            os.makedirs(self.settings.shipper_directory, exist_ok=True)

    async def run(self, stop: asyncio.Event) -> None:
        owners: List[Consumer] = []
        if ownership.enabled(self.settings):
            owners = self._owners()
        else:
            self.open_state()
            if self.jetstream and self.settings.shipper_failover_timeout:
                log.info("no failover: SHIPPER_FAILOVER_TIMEOUT needs SHIPPER_DIRECTORY (one "
                         "directory per host); serve each partition from one process only")
        self.ready()
        try:
            connecting = asyncio.ensure_future(connection.connect(self.settings))
            if not await first(asyncio.shield(connecting), stop, None):
                connecting.cancel()
                return
            self.nc = connecting.result()
            if self.jetstream:
                try:
                    streams.check_server(self.nc.connected_server_version, self.settings)
                except streams.ServerTooOldError as e:
                    raise DaemonError(str(e), 69) from None
                await self._ensure_streams(self.nc.jetstream(), stop)
            if owners:
                for owner in owners:
                    owner.nc = self.nc
                serve = [o._serve(n, stop) for o, n in zip(owners, self.settings.shipper_read_partitions)]
            elif self.jetstream:
                serve = [self._serve(n, stop) for n in self.settings.shipper_read_partitions]
            else:
                serve = [self._serve_core(n, stop) for n in self.settings.shipper_read_partitions]
            await asyncio.gather(*serve)
        finally:
            for consumer in [self] + owners:
                consumer.sink.close()
                consumer.ledger.close()
            await connection.close(self.nc)
            c = self.counters
            for owner in owners:
                c.add(owner.counters)
            log.info("stopped: %d messages, %d bytes written, %d duplicates skipped, %d refused "
                     "(%d on a partition not their host's), %d gaps",
                     c.messages, c.bytes, c.duplicates, c.refused, c.misplaced, c.gaps)

    def _owners(self) -> List["Consumer"]:
        """One Consumer per partition, each with its own claim, ledger and share of open files."""
        partitions = self.settings.shipper_read_partitions
        self.sink.reserve_descriptors()  # for all of them: their shares add up to SHIPPER_MAX_OPEN_FILES
        share = max(16, self.sink.max_open // len(partitions))
        os.makedirs(ownership.ledger_directory(self.settings), 0o750, exist_ok=True)
        log.info("failover: taking over a partition within %.1fs of its owner's end "
                 "(SHIPPER_FAILOVER_TIMEOUT=%gs)", self.settings.shipper_failover_timeout * 1.5 + FETCH_WAIT,
                 self.settings.shipper_failover_timeout)
        return [Consumer(self.settings, claim=Claim(self.settings.shipper_failover_timeout),
                         partition=n, max_open=share) for n in partitions]

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
                await sleep(delay, stop)

    async def _serve(self, number: int, stop: asyncio.Event) -> None:
        name = streams.consumer_name(self.settings, number)
        # An owner's requests renew its lease: several within each guard period.
        wait = min(FETCH_WAIT, self.claim.guard / 4) if self.claim else FETCH_WAIT
        puller = Puller(self.nc, self.settings.stream, name, self.settings.shipper_fetch_batch,
                        FETCH_BYTES, wait, self.claim)
        if self.claim is not None:
            await ownership.reclaim(self.nc, self.settings, name)
        await puller.start()
        log.info("partition %d: consuming %s%s", number, name,
                 " (writing only while it owns the partition)" if self.claim else "")
        backoff = Backoff(first=0.5, cap=30.0)
        try:
            while not stop.is_set():
                try:
                    msgs = await puller.fetch(self._commit_due() if self._uncommitted else None)
                except nats.errors.TimeoutError:
                    owning = await self._owning(number)
                    if owning and self._uncommitted:  # quiet now: commit what was gathered
                        delay = await self._commit_or_fail(number, backoff)
                        if delay:
                            await sleep(delay, stop)
                        continue
                    if owning:
                        self._housekeeping()
                    await self._recheck(number)
                    continue
                except (nats.errors.Error, OSError) as e:
                    delay = backoff.next_delay()
                    log.warning("partition %d: fetch failed (%s); retry in %.1fs",
                                number, str(e) or type(e).__name__, delay)
                    await sleep(delay, stop)
                    continue
                if not await self._owning(number):
                    await self._give_back(msgs)
                    continue
                delay = await self._handle(number, msgs, backoff, more=puller.busy())
                if delay:
                    # Pause. What the open request still brings meanwhile goes back
                    # too: nothing later may be written ahead of the retried batch.
                    for msg in await puller.hold(delay, stop):
                        await _reply(msg.nak(delay=delay))
                self._housekeeping()
        finally:
            if self._uncommitted and await self._owning(number):
                await self._commit_or_fail(number, backoff)
            for msg in await puller.stop():  # arrived, not written: at once to the next consumer
                await _reply(msg.nak())
            if self.claim is not None and self.claim.writable():
                await ownership.release(self.nc, self.settings.stream, name)

    async def _owning(self, number: int) -> bool:
        """Without a claim, always. With one: follow it — forget the state when the pin
        changed or was lost, load it (cutting files back to the ledger) once writing is
        safe under a new pin."""
        claim = self.claim
        if claim is None:
            return True
        if self._epoch is not None and self._epoch != claim.epoch:
            log.warning("partition %d: no longer the owner; %d message(s) given back unacknowledged",
                        number, len(self._uncommitted))
            await self._abandon()
        if self._epoch is None and claim.writable():
            try:
                self._forget()  # what the last tenure (or an unfinished load) left in memory
                self.open_state()
            except (OSError, FencedError) as e:
                log.error("partition %d: cannot load the state of the partition: %s", number, e)
                return False
            self._epoch = claim.epoch
            name = streams.consumer_name(self.settings, number)
            ownership.remember(ownership.pin_file(self.settings, name), claim.pin)
            log.info("partition %d: owner now (pin %s); written up to the ledger in %s",
                     number, claim.pin, self.ledger.path)
        return self._epoch is not None and claim.writable()

    async def _abandon(self) -> None:
        """Forget, and hand the written but unacknowledged messages back at once (from a
        client that lost the pin, a nak only brings a redelivery forward)."""
        replies = self._uncommitted
        self._forget()
        for reply in replies:
            await _reply(self.nc.publish(reply, b"-NAK"))

    def _forget(self) -> None:
        """Drop what this tenure holds in memory, touching no file: the next owner cuts
        back whatever was written and not recorded. Unacknowledged messages come again."""
        self.sink.forget()
        self.ledger.close()
        self.ledger = Ledger(os.path.dirname(self.ledger.path),
                             os.path.basename(self.ledger.path)[:-len(".ledger")], self.ledger.fence)
        self._uncommitted = []
        self._early_since.clear()
        self._epoch = None

    async def _give_back(self, msgs: List[Msg]) -> None:
        """Not the owner, or not yet: the messages go back, the owner's soon (after the
        guard of a new pin) or whoever is pinned (naks from a client that lost the pin
        only bring a redelivery forward)."""
        delay = max(0.2, self.claim.waiting()) if self.claim else 0.2
        for msg in msgs:
            await _reply(msg.nak(delay=delay))

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
                await sleep(delay, stop)
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
        if self.claim is not None and self._epoch is None:
            return  # a standby deletes nothing either
        now = time.time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            self.sink.expire(now)

    async def _handle(self, number: int, msgs: List[Msg], backoff: Backoff, more: bool = False) -> float:
        """Decide and write one batch; returns how long the partition should pause.

        Written lines are visible at once; they are made durable, recorded and
        acknowledged together at the next commit — after this batch if no more
        messages are waiting (`more`), else once COMMIT_EVERY has passed, so a
        busy consumer pays one fsync per file for several batches.
        """
        failpoint.reach("consumer-batch")
        acks: List[Msg] = []
        early: List[Tuple[Msg, float]] = []
        refused: List[Msg] = []
        written_bytes = 0
        # Deciding and writing run without an await: batches of different
        # partitions never interleave their writes.
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
            fresh = self.sink.unrecorded()
            if fresh:
                self.ledger.note_files(fresh)
            failpoint.reach("consumer-write")
            self.sink.write()
        except OSError as e:
            return await self._fail(number, e, acks + [m for m, _ in early], refused, backoff)
        except FencedError:
            await self._abandon()
            await self._give_back(msgs)
            return 0.0
        if acks and not self._uncommitted:
            self._gathered_since = time.monotonic()
        self._uncommitted += [m.reply for m in acks]
        self.counters.bytes += written_bytes
        self.counters.messages += len(acks)
        if self.jetstream:
            for msg, delay in early:
                await _reply(msg.nak(delay=delay))
            for msg in refused:
                await _reply(msg.term())
        if more and self._commit_due() > 0 and len(self._uncommitted) < COMMIT_MAX:
            return 0.0
        return await self._commit_or_fail(number, backoff)

    def _commit_due(self) -> float:
        """Seconds until what was gathered must be committed."""
        return max(0.0, self._gathered_since + COMMIT_EVERY - time.monotonic())

    async def _commit_or_fail(self, number: int, backoff: Backoff) -> float:
        try:
            await self._commit()
        except OSError as e:
            return await self._fail(number, e, [], [], backoff)
        except FencedError:
            log.warning("partition %d: ownership lapsed before the commit; %d message(s) given "
                        "back unacknowledged", number, len(self._uncommitted))
            await self._abandon()
            return 0.0
        if backoff.attempt:
            log.info("partition %d: writing again", number)
            backoff.reset()
        return 0.0

    async def _commit(self) -> None:
        """Make the written lines durable, record them, then acknowledge them."""
        started = time.monotonic()
        lengths = self.sink.sync()
        failpoint.reach("consumer-commit")
        self.ledger.commit(lengths)
        if self.claim is not None:
            # The journal line was begun under the lease; if it ended after, a new
            # owner may have loaded the ledger without it: acknowledge nothing.
            self.claim.check()
        log.debug("committed %d message(s) in %d file(s) in %.0f ms",
                  len(self._uncommitted), len(lengths), (time.monotonic() - started) * 1000)
        self.sink.confirm(lengths)
        replies, self._uncommitted = self._uncommitted, []
        if self.jetstream:
            for reply in replies:
                await _reply(self.nc.publish(reply, b""))  # an empty reply acknowledges
        
    async def _fail(self, number: int, error: OSError, msgs: List[Msg], refused: List[Msg],
                    backoff: Backoff) -> float:
        """Undo everything not committed; ask for it again after a back-off."""
        if self.claim is not None and not self.claim.writable():
            self._forget()  # cutting files back is for the owner (the next one does it)
        self.sink.rollback()
        self.ledger.rollback()
        replies, self._uncommitted = self._uncommitted + [m.reply for m in msgs], []
        delay = backoff.next_delay()
        log.error("partition %d: cannot write (%s); paused, %d message(s) asked again in %.1fs",
                  number, error, len(replies), delay)
        if self.jetstream:
            nak = b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode()
            for reply in replies:
                await _reply(self.nc.publish(reply, nak))
            for msg in refused:
                await _reply(msg.term())
        return delay

    def _decide(self, msg: Msg):
        """None: refuse; DUPLICATE; a float: early, ask again after that delay;
        an int: written (bytes queued for this batch)."""
        parsed = wire.parse_subject(self.settings.shipper_subject, msg.subject)
        if parsed is None or (self.settings.shipper_directory and not wire.safe_host(parsed[1])):
            self._refuse(msg.subject)
            return None
        number, host = parsed
        if number not in {wire.partition(host, n) for n in self._counts}:
            self._misplaced(msg.subject, host, number)
            return None
        path = self.sink.path_for(host, _stored_at(msg) if self.jetstream else time.time())
        pos, more = wire.read_headers(msg.headers)
        payload, tail = msg.data, (b"" if more else b"\n")  # written as two parts: no copy
        if pos is None:  # a plain message (e.g. the original Go producer): no identity to check
            self.sink.append(path, payload, tail)
            return len(payload) + len(tail)
        verdict, skip = self.ledger.check(host, pos)
        if verdict == EARLY and self._moved_here(host, pos.origin, number):
            verdict, skip = self.ledger.check(host, pos)
        key = f"{host} {pos.origin}"
        if verdict == DUPLICATE:
            self.counters.duplicates += 1
            return DUPLICATE
        if verdict == EARLY:
            first = self._early_since.setdefault(key, time.monotonic())
            if self.jetstream and time.monotonic() - first < self.settings.shipper_gap_timeout:
                self.counters.early += 1
                return min(0.2 * msg.metadata.num_delivered, 5.0)
            self.counters.gaps += 1
            log.error("host %s: %s never came within %.0fs; writing on from %s (a gap in the output)",
                      host, self._missing(host, pos), self.settings.shipper_gap_timeout, pos.encode())
        self._early_since.pop(key, None)
        if skip:  # the start of this range was written already
            tail = tail[max(0, skip - len(payload)):]
            payload = memoryview(payload)[skip:]
        self.sink.append(path, payload, tail)
        self.ledger.advance(host, pos)
        return len(payload) + len(tail)

    def _moved_here(self, host: str, origin: str, number: int) -> bool:
        """While resharding: a producer this partition has no record of may have moved
        here from the host's partition under the other count. Its ledger (on the shared
        storage, next to ours) says where the producer was; adopt that record."""
        if (self.claim is None or len(self._counts) < 2
                or self.ledger.last(host, origin) is not None):
            return False
        for count in self._counts:
            other = wire.partition(host, count)
            if other == number:
                continue
            ledger = Ledger(os.path.dirname(self.ledger.path), streams.consumer_name(self.settings, other))
            try:
                ledger.read()
            except (OSError, LedgerError) as e:
                log.warning("host %s: cannot read partition %d's ledger: %s", host, other, e)
                continue
            last = ledger.sources.get(f"{host} {origin}")
            if last is not None:
                log.info("host %s: moved from partition %d to %d; going on from its record there "
                         "(file %d byte %d)", host, other, number, last[0], last[1])
                self.ledger.adopt(host, origin, last)
                return True
        return False

    def _missing(self, host: str, pos: wire.Position) -> str:
        """The range a gap leaves out, for the log."""
        last = self.ledger.last(host, pos.origin)
        if last is not None:
            return f"producer {pos.origin}'s lines from file {last[0]} byte {last[1]} on"
        first = f"file {pos.first[0]} byte {pos.first[1]}" if pos.first else "its first file"
        return (f"producer {pos.origin}'s lines from {first} (no record of it here: expired from "
                "the stream, or written under another state directory)")

    def _refuse(self, subject: str) -> None:
        self.counters.refused += 1
        if subject not in self._refused_logged and len(self._refused_logged) < 1000:
            self._refused_logged.add(subject)
            log.warning("refused a message on %r: the host name is not a safe directory name "
                        "(refused so far: %d)", subject, self.counters.refused)

    def _misplaced(self, subject: str, host: str, number: int) -> None:
        """A host's lines on another partition than its own: whoever owns its own
        partition writes that host; a second writer would cut or repeat its lines."""
        self.counters.refused += 1
        self.counters.misplaced += 1
        if subject not in self._refused_logged and len(self._refused_logged) < 1000:
            self._refused_logged.add(subject)
            counts = sorted(self._counts)
            log.warning("refused a message on %r: host %s belongs to partition %s, not %d "
                        "(SHIPPER_PARTITIONS=%d%s; refused so far: %d)", subject, host,
                        " or ".join(str(wire.partition(host, n)) for n in counts), number,
                        self.settings.shipper_partitions,
                        f", SHIPPER_PARTITIONS_BEFORE={self.settings.shipper_partitions_before}"
                        if self.settings.shipper_partitions_before is not None else "",
                        self.counters.refused)


def _stored_at(msg: Msg) -> float:
    """When the server stored the message (from its ack subject; the day of the
    output file, the same at every redelivery)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:     # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>
        return int(tokens[7]) / 1e9
    return msg.metadata.timestamp.timestamp()   # the longer forms, parsed by nats-py


async def _reply(aw) -> None:
    """An ack/nak/term that cannot be sent is fine: the server redelivers later."""
    try:
        await aw
    except (nats.errors.Error, OSError) as e:
        log.debug("acknowledgement not sent: %s", e)
