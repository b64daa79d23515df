"""fshipper-consumer: pull each partition, write one file per host, acknowledge after.

Per batch: decide for every message (write, duplicate, early, refuse: see
trust.py for what is believed of a header), record
the length of any file not written before, write and fsync the files, record
positions and lengths in the ledger, and only then acknowledge. A failure anywhere before the ledger is saved rolls the batch back
and asks for redelivery after a back-off; the partition waits meanwhile, so no
later line of a host is written ahead of an earlier one.

With failover (ownership.py) each partition is served by a Consumer of its
own, with the partition's ledger on the shared storage, and only while it owns
the partition (its Tenure says when).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import nats.errors
from nats.aio.msg import Msg

from . import connection, failpoint, ownership, streams, trust, wire
from .config import EX_CONFIG, Settings
from .daemon import DaemonError
from .early import EarlyHold
from .ledger import DUPLICATE, EARLY, Ledger
from .ownership import Claim, FencedError
from .puller import Puller
from .sink import Sink
from .statusfile import StatusFile
from .util import Backoff, first, sleep
from .wire import safe_host

log = logging.getLogger(__name__)

FETCH_WAIT = 1.0        # seconds a pull request waits for messages (also bounds stop latency)
FETCH_BYTES = 16 << 20   # bytes one pull request may bring: bounds memory whatever the message size
EXPIRE_EVERY = 3600.0   # seconds between sweeps of old output files
RECHECK_IDLE = 30.0     # seconds idle before checking the stream and consumer still exist
COMMIT_EVERY = 1.0      # seconds a busy consumer may gather batches before one commit
COMMIT_MAX = 10000      # messages gathered at most (well below the consumer's max_ack_pending)
COMMIT_QUIET = 0.005    # seconds without a message before a commit, when nothing said more was coming
HELD = "held"           # a decision: early, kept in memory until its predecessor comes (early.py)


class Counters:
    """What the consumer did since it started (kept across reloads); metrics read it.
    Lines, bytes and messages count once committed: written, durable, recorded."""

    def __init__(self) -> None:
        self.messages = 0
        self.bytes = 0
        self.lines = 0
        self.duplicates = 0
        self.early = 0
        self.gaps = 0
        self.write_errors = 0
        self.last_commit = 0.0
        self.cut = 0   # lines left open by a part and ended by the consumer
        self.refusals = trust.Refusals()


class Consumer:
    def __init__(self, settings: Settings, ready: Callable[[], None] = lambda: None,
                 counters: Optional[Counters] = None, claim: Optional[Claim] = None,
                 partition: int = 0, max_open: int = 0) -> None:
        self.settings = settings
        self.ready = ready
        fence = claim.check if claim else None
        self.sink = Sink(settings.shipper_output, settings.shipper_directory,
                         max_open or settings.shipper_max_open_files,
                         settings.shipper_fsync == "batch", settings.shipper_keep_days, fence)
        if claim is None:
            self.ledger = Ledger(settings.shipper_state_dir, settings.name)
        else:
            self.ledger = ownership.partition_ledger(settings, partition, fence)
        # With a claim: writes only while it owns the partition. Without: serves
        # its partitions alone, or (failover) through one such Consumer each.
        self.tenure = ownership.Tenure(self, claim, partition) if claim else None
        self.owners: List[Consumer] = []
        self.partitions = ownership.partition_counts(settings)  # a host's count, now and before
        self.counters = counters or Counters()
        self.refusals = self.counters.refusals
        self._tally = [0, 0, 0]  # messages, bytes, lines written and not yet committed
        self.status = StatusFile(settings.shipper_state_dir, settings.name, role="consumer",
                                 partitions=list(settings.shipper_read_partitions))
        self._early_since: Dict[str, float] = {}
        self.early = EarlyHold()            # early messages waiting for their predecessor
        self._advanced: set = set()         # producers whose chain the open batch moved on
        self.bounds = trust.Bounds(settings.shipper_max_hosts, self.refusals)
        self._next_expiry = 0.0
        self._checked: Dict[int, float] = {}
        self._uncommitted: List[str] = []   # reply subjects of written messages, to acknowledge
        self._gathered_since = 0.0          # when the first of them was written
        self.jetstream = settings.shipper_mode == "jetstream"
        self.nc = None

    def open_state(self) -> None:
        """Load the ledger and cut every file back to what it records."""
        self.ledger.load(self._recorded_file)
        files = self.ledger.files
        if self.tenure is not None:
            files = ownership.last_written_here(self.ledger, files)
        self.sink.restore(files)
        self.sink.reserve_descriptors()
        self._check_output_directory()
        self.bounds.recount(self.sink.hosts, self.ledger.hosts())

    def _recorded_file(self, path: str) -> bool:
        """Keep a file the ledger names? Only one this sink could have made (a
        ledger may be older than the settings, or not ours), and that exists."""
        if not self.sink.owns(path):
            log.warning("%s: recorded in the ledger but not under the output directory; left alone", path)
            return False
        return os.path.lexists(path)

    def _check_output_directory(self) -> None:
        """Refuse to start (78, one line) where the output cannot be written at
        all: retrying never makes a read-only directory writable."""
        directory = self.settings.shipper_directory or os.path.dirname(self.settings.shipper_output)
        if not directory:
            return
        try:
            if self.settings.shipper_directory:
                os.makedirs(directory, 0o750, exist_ok=True)
            if not os.path.isdir(directory) or os.access(directory, os.W_OK):
                return
            read_only = os.statvfs(directory).f_flag & os.ST_RDONLY
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, os.strerror(code), directory)
        except OSError as e:
            raise DaemonError(output_problem(self.settings, directory, e), EX_CONFIG) from None

    async def run(self, stop: asyncio.Event) -> None:
        if ownership.enabled(self.settings):
            self._check_output_directory()
            self.owners = ownership.partition_consumers(self)
        else:
            self.open_state()
        self.status.write()
        self.ready()
        try:
            connecting = asyncio.ensure_future(connection.connect(
                self.settings, on_change=lambda text: self.status.problem("nats", text)))
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
            if self.owners:
                for owner in self.owners:
                    owner.nc = self.nc
                serve = [o._serve(n, stop) for o, n in zip(self.owners, self.settings.shipper_read_partitions)]
            elif self.jetstream:
                serve = [self._serve(n, stop) for n in self.settings.shipper_read_partitions]
            else:
                serve = [self._serve_core(n, stop) for n in self.settings.shipper_read_partitions]
            await asyncio.gather(*serve)
        finally:
            for consumer in [self] + self.owners:
                consumer.sink.close()
                consumer.ledger.close()
            await connection.close(self.nc)
            c = self.counters
            log.info("stopped: %d messages, %d bytes written, %d duplicates skipped, %d refused, %d gaps, "
                     "%d open lines ended (refused: %s)", c.messages, c.bytes, c.duplicates,
                     self.refusals.total, c.gaps, c.cut, self.refusals.summary())

    async def _ensure_streams(self, js, stop: asyncio.Event) -> None:
        """Retry while the server cannot answer (no server, no leader yet); a
        conflict (a stream or consumer fshipper does not own, a limit that would
        shrink) does not heal by waiting: exit 78 saying why."""
        backoff = Backoff(first=0.5, cap=15.0)
        while not stop.is_set():
            try:
                await streams.ensure(js, self.settings, self.settings.shipper_read_partitions)
                return
            except streams.ConflictError as e:
                raise DaemonError(f"{e}; see `fshipper setup --dry-run`", EX_CONFIG) from None
            except (nats.errors.Error, asyncio.TimeoutError) as e:
                delay = backoff.next_delay()
                log.warning("cannot set up stream %s yet (%s); retry in %.1fs",
                            self.settings.stream, str(e) or type(e).__name__, delay)
                await sleep(delay, stop)

    async def _serve(self, number: int, stop: asyncio.Event) -> None:
        name = streams.consumer_name(self.settings, number)
        tenure = self.tenure
        puller = Puller(self.nc, self.settings.stream, name, self.settings.shipper_fetch_batch,
                        FETCH_BYTES, tenure.fetch_wait(FETCH_WAIT) if tenure else FETCH_WAIT,
                        tenure.claim if tenure else None)
        if tenure:
            await tenure.reclaim(name)
        await puller.start()
        log.info("partition %d: consuming %s%s", number, name,
                 " (writing only while it owns the partition)" if tenure else "")
        backoff = Backoff(first=0.5, cap=30.0)

        async def pause(delay: float) -> None:
            """After a failed batch: what the open request still brings meanwhile goes
            back too, so that nothing later is written ahead of what is asked again."""
            for msg in await puller.hold(delay, stop):
                await _reply(msg.nak(delay=delay))

        try:
            while not stop.is_set():
                try:
                    msgs = await puller.fetch(self._fetch_wait(puller))
                except nats.errors.TimeoutError:
                    owning = await self._owning()
                    if owning and tenure and tenure.held:  # held through a new pin's guard
                        msgs = tenure.take_held()
                    elif owning and self._uncommitted:  # quiet now: commit what was gathered
                        delay = await self._commit_or_fail(number, backoff)
                        if delay:
                            await pause(delay)
                        continue
                    else:
                        if owning:
                            delay = await self._tend_early(number, backoff)
                            if delay:
                                await pause(delay)
                            self._housekeeping()
                        await self._recheck(number)
                        continue
                except (nats.errors.Error, OSError) as e:
                    delay = backoff.next_delay()
                    log.warning("partition %d: fetch failed (%s); retry in %.1fs",
                                number, str(e) or type(e).__name__, delay)
                    await sleep(delay, stop)
                    continue
                if not await self._owning():
                    puller.max_bytes = ownership.GUARD_FETCH_BYTES  # what it holds stays small
                    await tenure.hold_or_give_back(msgs)
                    await tenure.wait_out_guard(puller, stop)
                    continue
                puller.max_bytes = FETCH_BYTES
                if tenure and tenure.held:
                    msgs = tenure.take_held() + msgs
                delay = await self._handle(number, msgs, backoff, more=True)
                if not delay:
                    delay = await self._tend_early(number, backoff)
                if delay:
                    await pause(delay)
                self._housekeeping()
        finally:
            if self._uncommitted and await self._owning():
                await self._commit_or_fail(number, backoff)
            left = self.early.take_all() + (tenure.take_held() if tenure else []) + await puller.stop()
            for msg in left:  # arrived, not written: at once to the next consumer
                await _reply(msg.nak())
            if tenure:
                await tenure.release(name)

    async def _owning(self) -> bool:
        """May this Consumer write its partition now? Always without a claim."""
        return self.tenure is None or await self.tenure.owning()

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
        except (streams.ConflictError, nats.errors.Error, asyncio.TimeoutError) as e:
            log.warning("partition %d: cannot check stream %s: %s", number, self.settings.stream, e)

    def _housekeeping(self) -> None:
        if self.tenure is not None and not self.tenure.loaded():
            return  # a standby deletes nothing either
        now = time.time()
        if now >= self._next_expiry:
            self._next_expiry = now + EXPIRE_EVERY
            removed = self.sink.expire(now)
            if removed:
                try:
                    self.ledger.forget_files(removed)
                except OSError as e:  # kept: a path no file has any more is harmless
                    log.warning("cannot record the removal of old output yet: %s", e)
                self.bounds.recount(self.sink.hosts, self.ledger.hosts())

    async def _handle(self, number: int, msgs: List[Msg], backoff: Backoff, more: bool = False) -> float:
        """Decide and write one batch; returns how long the partition should pause.

        Written lines are visible at once; they are made durable, recorded and
        acknowledged together at the next commit — after this batch unless the
        caller looks for more (`more`: it commits once no message came for a
        moment, see `_fetch_wait`), and at the latest once COMMIT_EVERY has
        passed, so a busy consumer pays one fsync per file for several batches.
        """
        if msgs:
            failpoint.reach("consumer-batch")
        acks: List[Msg] = []
        early: List[Tuple[Msg, float]] = []
        refused: List[Msg] = []
        written_bytes = 0

        def decide(msg: Msg) -> bool:
            nonlocal written_bytes
            decision = self._decide(msg)
            if decision is None:
                refused.append(msg)
            elif decision == DUPLICATE:
                acks.append(msg)
            elif decision == HELD:
                return True
            elif isinstance(decision, float):
                early.append((msg, decision))
                return True
            else:
                acks.append(msg)
                written_bytes += decision
            return False

        # Deciding and writing run without an await: batches of different
        # partitions never interleave their writes.
        self._advanced = set()
        for msg in msgs:
            self.counters.early += decide(msg)
        released = []  # held messages whose predecessor this batch wrote, or whose wait is over
        due = self._held_due() if self.early else set()
        while self._advanced or due:
            keys = (self._advanced | due) & set(self.early.keys())
            self._advanced, due = set(), set()
            for key in keys:
                # In chain order, until one is early still: those after it are too.
                for msg in self.early.chain(key):
                    self.early.drop(key, msg)
                    released.append(msg)
                    if decide(msg):
                        break
        try:
            fresh = self.sink.unrecorded()
            if fresh:
                try:
                    self.ledger.note_files(fresh)
                except OSError:
                    self.sink.unrecord(fresh)
                    raise
            failpoint.reach("consumer-write")
            self.sink.write()
        except OSError as e:
            return await self._fail(number, e, acks + [m for m, _ in early], refused, backoff)
        except FencedError:
            await self.tenure.lapsed(number, msgs + released)
            return 0.0
        if acks and not self._uncommitted:
            self._gathered_since = time.monotonic()
        self._uncommitted += [m.reply for m in acks]
        self._tally[0] += len(acks)
        self._tally[1] += written_bytes
        if self.jetstream:
            for msg, delay in early:
                await _reply(msg.nak(delay=delay))
            for msg in refused:
                await _reply(msg.term())
        if more and self._commit_due() > 0 and len(self._uncommitted) < COMMIT_MAX:
            return 0.0
        return await self._commit_or_fail(number, backoff)

    def _held_due(self) -> set:
        """Producers whose held messages are to be decided again although no
        predecessor came: held for SHIPPER_GAP_TIMEOUT (written on, with a gap),
        or moved here while resharding (their old partition's record may have
        moved on since)."""
        now, timeout = time.monotonic(), self.settings.shipper_gap_timeout
        due = {k for k in self.early.keys() if now - self._early_since.get(k, now) >= timeout}
        if self.tenure is not None:
            due |= self.tenure.moved_due(self.early.keys())
        return due

    async def _tend_early(self, number: int, backoff: Backoff) -> float:
        """Keep held messages from being sent again; write on those waited for too long."""
        if not self.early:   # after every batch: nothing to do unless something is held
            return 0.0
        for msg in self.early.due():
            await _reply(msg.in_progress())
        return await self._handle(number, [], backoff) if self._held_due() else 0.0

    def _commit_due(self) -> float:
        """Seconds until what was gathered must be committed."""
        return max(0.0, self._gathered_since + COMMIT_EVERY - time.monotonic())

    def _fetch_wait(self, puller: Puller) -> Optional[float]:
        """How long the next fetch may wait before what was gathered is
        committed (None: nothing is gathered).

        While more is coming, until COMMIT_EVERY has passed; when nothing says
        so, COMMIT_QUIET. The puller's view can be old: the count of what the
        stream still holds comes with the last message delivered, before the
        batch was written, and writing a batch for 1,000 new hosts takes a
        tenth of a second while the stream fills up. A moment's wait for the
        next message spares a commit (an fsync per file) in the middle of a
        backlog; an idle consumer acknowledges that much later, and written
        lines were visible at once.
        """
        if not self._uncommitted:
            return None
        due = self._commit_due()
        return due if puller.busy() else min(due, COMMIT_QUIET)

    async def _commit_or_fail(self, number: int, backoff: Backoff) -> float:
        try:
            await self._commit()
        except OSError as e:
            return await self._fail(number, e, [], [], backoff)
        except FencedError:
            await self.tenure.lapsed(number, [])
            return 0.0
        if backoff.attempt:
            log.info("partition %d: writing again", number)
            self.status.problem(paused(number), None)
            backoff.reset()
        return 0.0

    async def _commit(self) -> None:
        """Make the written lines durable, record them, then acknowledge them."""
        started = time.monotonic()
        lengths = self.sink.sync()
        failpoint.reach("consumer-commit")
        if self.tenure is not None:
            # The fsyncs may have taken longer than the lease had left.
            await self.tenure.confirm(margin=self.tenure.claim.guard / 2)
        self.ledger.commit(lengths)
        if self.tenure is not None:
            # The journal line was begun under the lease; if it ended after, a new
            # owner may have loaded the ledger without it: acknowledge nothing.
            self.tenure.claim.check()
        log.debug("committed %d message(s) in %d file(s) in %.0f ms",
                  len(self._uncommitted), len(lengths), (time.monotonic() - started) * 1000)
        self.sink.confirm(lengths)
        c = self.counters
        c.messages, c.bytes, c.lines = c.messages + self._tally[0], c.bytes + self._tally[1], c.lines + self._tally[2]
        self._tally = [0, 0, 0]
        c.last_commit = time.time()
        replies, self._uncommitted = self._uncommitted, []
        if self.jetstream:
            for reply in replies:
                await _reply(self.nc.publish(reply, b""))  # an empty reply acknowledges
        
    async def _fail(self, number: int, error: OSError, msgs: List[Msg], refused: List[Msg],
                    backoff: Backoff) -> float:
        """Undo everything not committed; ask for it again after a back-off."""
        msgs = msgs + self.early.take_all()
        if self.tenure is not None and not self.tenure.claim.writable():
            self.tenure.forget()  # cutting files back is for the owner (the next one does it)
        self.sink.rollback()
        self.ledger.rollback()
        replies, self._uncommitted = self._uncommitted + [m.reply for m in msgs], []
        self._tally = [0, 0, 0]
        self.counters.write_errors += 1
        delay = backoff.next_delay()
        if error.errno == errno.EROFS:
            error = output_problem(self.settings, os.path.dirname(error.filename or "") or "?", error)
        self.status.problem(paused(number), f"cannot write: {error}")
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
        """None: refuse; DUPLICATE; HELD: early, kept until its predecessor comes;
        a float: early, ask again after that delay; an int: written (bytes queued
        for this batch)."""
        parsed = wire.parse_subject(self.settings.shipper_subject, msg.subject)
        if parsed is None or (self.settings.shipper_directory and not safe_host(parsed[1])):
            return self._refuse(msg.subject, "the host name is not a safe directory name", "host name")
        number, host = parsed
        if number not in {wire.partition(host, n) for n in self.partitions}:
            return self._refuse(msg.subject, ownership.misplaced(self.settings, host, number), "partition")
        try:
            pos, more = wire.read_headers(msg.headers)
        except wire.HeaderError as e:
            return self._refuse(msg.subject, str(e), "header")
        payload, tail = msg.data, (b"" if more else b"\n")  # written as two parts: no copy
        if pos is not None:
            problem = trust.inconsistency(pos, more, len(payload))
            if problem:
                return self._refuse(msg.subject, f"Fshipper-Pos {pos.encode()[:120]!r}: {problem}", "header")
        if not self.bounds.admit(msg.subject, host, pos and pos.origin, self.ledger.origins(host)):
            return None
        path = self.sink.path_for(host, _stored_at(msg) if self.jetstream else time.time())
        problem = self.sink.unsafe(path)
        if problem:
            return self._refuse(msg.subject, problem, "unsafe path")
        if pos is None:  # a plain message (e.g. the original Go producer): no identity to check
            self._end_open_line(host, path, None)
            self.sink.append(path, payload, tail)
            self._tally[2] += payload.count(b"\n") + len(tail)
            return len(payload) + len(tail)
        verdict, skip = self.ledger.check(host, pos)
        if verdict == EARLY and self.tenure is not None and self.tenure.moved_here(host, pos.origin):
            verdict, skip = self.ledger.check(host, pos)
        key = f"{host} {pos.origin}"
        if verdict == DUPLICATE:
            self.counters.duplicates += 1
            return DUPLICATE
        if verdict == EARLY:
            first = self._early_since.setdefault(key, time.monotonic())
            if pos.origin not in self.ledger.origins(host):
                self.bounds.wait(host, pos.origin)
            if self.jetstream and time.monotonic() - first < self.settings.shipper_gap_timeout:
                if self.early.hold(key, pos, msg):
                    return HELD
                return min(0.2 * msg.metadata.num_delivered, 5.0)
            self.counters.gaps += 1
            log.error("host %s: %s never came within %.0fs; writing on from %s (a gap in the output)",
                      host, self._missing(host, pos), self.settings.shipper_gap_timeout, pos.encode())
        self._early_since.pop(key, None)
        self._advanced.add(key)
        self.bounds.written(host, pos.origin)
        self._end_open_line(host, path, pos if verdict != EARLY else None)
        if skip:  # the start of this range was written already
            tail = tail[max(0, skip - len(payload)):]
            payload = memoryview(payload)[skip:]
        self._tally[2] += msg.data.count(b"\n", skip) + len(tail)
        self.sink.append(path, payload, tail)
        self.ledger.advance(host, pos, more)
        return len(payload) + len(tail)

    def _end_open_line(self, host: str, path: str, pos: Optional[wire.Position]) -> None:
        """Before anything but the rest of an open line (a part written, the rest
        to come) is written to the host's file, end that line: bytes of one
        producer are never glued to another's, nor to a range not next to them."""
        open_line = self.ledger.open_line(host)
        if open_line is None:
            return
        origin, record = open_line
        if pos is not None and pos.origin == origin and pos.gen == record[0] and pos.start <= record[1]:
            return   # the rest of that line
        self.sink.append(path, b"\n")
        self.ledger.close_line(host, origin)
        self.counters.cut += 1
        log.warning("host %s: producer %s's line left open at file %d byte %d is ended here: "
                    "another message came before the rest of it", host, origin, record[0], record[1])

    def _missing(self, host: str, pos: wire.Position) -> str:
        """The range a gap leaves out, for the log."""
        last = self.ledger.last(host, pos.origin)
        if last is not None:
            return f"producer {pos.origin}'s lines from file {last[0]} byte {last[1]} on"
        first = f"file {pos.first[0]} byte {pos.first[1]}" if pos.first else "its first file"
        return (f"producer {pos.origin}'s lines from {first} (no record of it here: expired from "
                "the stream, or written under another state directory)")

    def metrics(self) -> list:
        """Samples for fshipper.metrics, read when scraped."""
        return _samples(self)

    def _refuse(self, subject: str, reason: str, kind: str) -> None:
        """Count and log (rate-limited) a refusal; the message is terminated, never written."""
        self.refusals.note(subject, reason, kind)
        return None


def _samples(consumer: "Consumer") -> list:
    c = consumer.counters
    paused_now = sum(1 for what in consumer.status.problems if what.startswith("paused p"))
    return [
        ("fshipper_consumer_lines", "counter", "lines written, made durable and acknowledged", c.lines),
        ("fshipper_consumer_bytes", "counter", "bytes of those lines, newlines included", c.bytes),
        ("fshipper_consumer_messages", "counter", "messages acknowledged (written or duplicate)", c.messages),
        ("fshipper_consumer_duplicates", "counter", "messages whose lines were written already (skipped)",
         c.duplicates),
        ("fshipper_consumer_refusals", "counter",
         "messages refused: unsafe host name or path, bad subject or header, a bound reached", c.refusals.total),
        ("fshipper_consumer_early", "counter", "messages that came before their predecessor (held until it came, or asked again)",
         c.early),
        ("fshipper_consumer_gaps", "counter", "predecessors that never came within SHIPPER_GAP_TIMEOUT", c.gaps),
        ("fshipper_consumer_write_errors", "counter", "batches that could not be written (then paused)",
         c.write_errors),
        ("fshipper_consumer_paused_partitions", "gauge", "partitions paused as they cannot write", paused_now),
        ("fshipper_consumer_open_files", "gauge", "output files open",
         sum(c.sink.open_count() for c in [consumer] + consumer.owners)),
        ("fshipper_consumer_last_commit_timestamp_seconds", "gauge",
         "when lines were last made durable and acknowledged (Unix time; 0 never)", c.last_commit),
        ("fshipper_consumer_nats_connected", "gauge", "1 while connected to a NATS server",
         1 if consumer.nc is not None and consumer.nc.is_connected else 0),
    ]


def paused(number: int) -> str:
    """The status file's name for a partition's pause (see fshipper.health)."""
    return f"paused p{number}"


def output_problem(settings: Settings, directory: str, error: OSError) -> str:
    """One line on why the output directory cannot be written, and for a
    read-only one (the units' ProtectSystem=strict) the drop-in that allows it."""
    if error.errno != errno.EROFS:
        return f"output directory {directory}: cannot write there: {error.strerror or error}"
    unit = f"fshipper-consumer@{settings.instance}" if settings.instance else "fshipper-consumer"
    return (f"{directory}: read-only file system (the unit's ProtectSystem=strict allows writing to "
            f"/var/log/fshipper only): run `systemctl edit {unit}`, add the lines "
            f"`[Service]` and `ReadWritePaths={directory}`, then restart it")


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
