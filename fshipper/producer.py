"""fshipper-producer: follow one file, publish its lines, save what the server confirmed.

The file itself is the buffer: at most `SHIPPER_MAX_INFLIGHT` messages are in
flight, and nothing is read ahead of them, so memory stays flat however large
the backlog. After a failure the unconfirmed messages are sent again, in order,
with the same ids; the server drops those it already has.

A "duplicate" answer is not taken as a confirmation. Message ids are stable
and so predictable: another client of the stream that knows the next id (even
one allowed to publish on its own subject only) can publish it first, and
the server would then drop this host's real message as a repeat. So a
duplicate is sent again under the same id plus a random suffix that no one
can guess, and counts as confirmed only when the server stores it. Storing a
range twice is harmless: the consumer writes each range once (Fshipper-Pos).
The same happens, legitimately, for a message stored whose confirmation was
lost (a re-send) or that a previous run sent before it stopped: those are a
warning. A duplicate for a message this run sent once, after the server had
stored one of this run's messages under its own id, was pre-empted: an error
naming the id. (Rarely, after a restart, a previous run's message that the new
run happens to cut at the same bytes is reported so too; its lines still
arrive once.)
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from typing import Callable, Deque, Optional

import nats.errors
import nats.js.errors

from . import connection, wire
from .config import Settings
from .follower import POLL_SECONDS, Chunk, Follower
from .offsets import PositionStore
from .statusfile import StatusFile
from .util import Backoff, Wake, first, sleep

log = logging.getLogger(__name__)

ACK_TIMEOUT = 10.0   # a publish not confirmed by then is sent again
STOP_GRACE = 5.0     # how long a stop waits for in-flight confirmations
HEADER_ROOM = 1024   # headers count against the server's max_payload


class Counters:
    """What the producer did since it started (kept across reloads); metrics read it."""

    def __init__(self) -> None:
        self.lines = 0       # confirmed by the server (core mode: flushed)
        self.bytes = 0       # of those lines, newlines included: the file's bytes
        self.messages = 0
        self.retries = 0     # messages published again
        self.duplicates = 0  # "duplicate" answers


class Sent:
    """A chunk in the publish window: its latest publish, how many times it was
    published, and the random suffix of its id once a duplicate answer made one
    necessary."""

    __slots__ = ("chunk", "future", "sends", "suffix", "deadline")

    def __init__(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.future: "asyncio.Future" = asyncio.get_running_loop().create_future()
        self.sends = 0
        self.suffix = ""
        self.deadline = 0.0   # when its latest publish counts as unconfirmed


def _failure(future: "asyncio.Future") -> Optional[BaseException]:
    """Why a finished publish did not succeed (None if it did)."""
    if future.cancelled():
        return asyncio.CancelledError("publish abandoned")
    return future.exception()


def _stored(future: "asyncio.Future") -> bool:
    """Did the server store the message now (not answer "duplicate")?"""
    return future.done() and _failure(future) is None and not future.result().duplicate


class Producer:
    def __init__(self, settings: Settings, ready: Callable[[], None] = lambda: None,
                 counters: Optional[Counters] = None) -> None:
        self.settings = settings
        self.ready = ready
        self.counters = counters or Counters()
        self.host = settings.hostname or ""
        self.subject = wire.subject(settings.shipper_subject, self.host, settings.shipper_partitions)
        self.store = PositionStore(settings.shipper_state_dir, settings.name)
        self.status = StatusFile(settings.shipper_state_dir, settings.name, role="producer",
                                 file=settings.shipper_file, host=self.host, subject=self.subject)
        self.follower: Optional[Follower] = None
        self.window: Deque[Sent] = collections.deque()
        self.backoff = Backoff(first=0.5, cap=30.0)
        self.stored_fresh = False   # has the server stored anything this run sent?
        self.repeats_reported = False
        self.nc = None
        self.max_bytes = settings.shipper_batch_bytes
        self.wake = Wake()   # the one wait between lines: _wait

    async def run(self, stop: asyncio.Event) -> None:
        resume = self.store.load()
        self.follower = Follower(self.settings.shipper_file, self.settings.shipper_rotate_wait, resume)
        self.follower.start(asyncio.get_running_loop())
        if not self.store.placed and self.follower.ref is not None:
            # A first start: record the file now, not with its first line, so a
            # restart after a rotation still finishes it (rather than take the
            # rotated file for history from before fshipper ran).
            self.store.place(self.follower.ref, self.follower.offset)
        self.store.flush()
        self._note_file()
        self.status.write()
        log.info("shipping %s as %s on %s (%s mode)", self.settings.shipper_file, self.host,
                 self.subject, self.settings.shipper_mode)
        self.ready()
        # While disconnected the client buffers what is published: room for the
        # window and one re-send of it; more fails fast and is sent again later.
        window = self.settings.shipper_max_inflight * self.max_bytes
        connecting = asyncio.ensure_future(connection.connect(
            self.settings, pending_bytes=2 * window + (1 << 20),
            on_change=lambda text: self.status.problem("nats", text)))
        try:
            if not await first(asyncio.shield(connecting), stop, None):
                connecting.cancel()
                return
            self.nc = connecting.result()
            self.max_bytes = max(4096, min(self.max_bytes, self.nc.max_payload - HEADER_ROOM))
            watcher = asyncio.ensure_future(self.wake.watch(stop))
            try:
                if self.settings.shipper_mode == "core":
                    await self._ship_core(stop)
                else:
                    await self._ship_jetstream(stop)
            finally:
                watcher.cancel()
        finally:
            self.store.close()
            self.follower.close()
            await connection.close(self.nc)

    # --- JetStream: confirmed, exactly once with the consumer's help ------------------

    async def _ship_jetstream(self, stop: asyncio.Event) -> None:
        js = self.nc.jetstream(publish_async_max_pending=self.settings.shipper_max_inflight + 1)
        while not stop.is_set():
            # Also while the server is away: what it confirmed before is then on
            # disk, and status counts the lag from there.
            self.store.flush_due()
            try:
                await self._fill(js)
            except (nats.errors.Error, OSError) as e:
                await self._recover(js, stop, e)
                continue
            if not self.window:
                await self._idle(stop)
                continue
            head = self.window[0]
            if not await self._await_head(head, stop):
                if stop.is_set():
                    break
                if time.monotonic() < head.deadline:
                    continue  # the file changed: publish its new lines first
                await self._recover(js, stop, asyncio.TimeoutError("no confirmation within %.0fs" % ACK_TIMEOUT))
                continue
            error = _failure(head.future)
            if error is None and not _stored(head.future):
                self.counters.duplicates += 1
                self._report_duplicate(head)
                head.suffix = secrets.token_hex(8)
                try:
                    await self._publish(js, head)
                except (nats.errors.Error, OSError) as e:
                    error = e
            if error is not None:
                await self._recover(js, stop, error)
                continue
            self._confirm()
        await self._settle()

    async def _fill(self, js) -> None:
        while len(self.window) < self.settings.shipper_max_inflight:
            chunk = self.follower.read(self.max_bytes)
            if chunk is None:
                return
            if not self.store.placed:
                self.store.place(chunk.ref, chunk.start)
            sent = Sent(chunk)
            # In the window before it is published: a publish the client refuses
            # (its buffer full while disconnected) is sent again, not lost.
            self.window.append(sent)
            await self._publish(js, sent)
            # A turn of the loop: the client's flusher sends it now, before the
            # next read and, at the end of the file, the checks for rotation.
            await asyncio.sleep(0)

    async def _await_head(self, head: Sent, stop: asyncio.Event) -> bool:
        """Wait for the head's confirmation (True), the stop, its deadline or,
        while the window has room, a change of the file: new lines are then
        published at once rather than a confirmation's round trip later."""
        remaining = max(0.0, head.deadline - time.monotonic())
        await self._wait(stop, remaining, head, file=len(self.window) < self.settings.shipper_max_inflight)
        return head.future.done()

    async def _wait(self, stop: asyncio.Event, timeout: Optional[float], head: Optional[Sent] = None,
                    file: bool = True) -> None:
        """Until the stop, `timeout`, the confirmation of `head` or (if `file`) a
        change of the file, whichever comes first: one future that each of them
        resolves (util.Wake), so a line written meanwhile costs one turn of the
        loop to notice."""
        follower = self.follower
        if not (stop.is_set() or (head is not None and head.future.done()) or (file and follower.changed())):
            if head is not None:
                head.future.add_done_callback(self.wake.set)
            if file:
                follower.listener = self.wake.set
            try:
                await self.wake.wait(timeout)
            finally:
                if head is not None:
                    head.future.remove_done_callback(self.wake.set)
                follower.listener = None
        if file:
            follower.take_change()   # what it reported is read next

    async def _publish(self, js, sent: Sent) -> None:
        headers = self._headers(sent.chunk, sent.suffix)
        sent.future = await js.publish_async(self.subject, sent.chunk.payload, headers=headers)
        sent.sends += 1
        sent.deadline = time.monotonic() + ACK_TIMEOUT

    def _headers(self, chunk: Chunk, suffix: str = "") -> dict:
        headers = wire.headers(self.host, chunk.position(self.store.origin, self.store.first), chunk.more)
        if suffix:
            headers[wire.HDR_MSG_ID] += ":" + suffix
        return headers

    def _report_duplicate(self, sent: Sent) -> None:
        msg_id = self._headers(sent.chunk, sent.suffix)[wire.HDR_MSG_ID]
        if sent.sends == 1 and self.stored_fresh:
            log.error("the server already had message id %s before this producer sent it: another client "
                      "pre-empted it (it knows this host's ids); sending bytes %d-%d again under an id "
                      "no one can guess", msg_id, sent.chunk.start, sent.chunk.end)
        elif not self.repeats_reported:  # a re-send or a previous run's: once until the next fresh one
            self.repeats_reported = True
            log.warning("the server already had message id %s (sent before, by this run or the previous "
                        "one, and not confirmed; or pre-empted by another client): sending it again under "
                        "an id no one can guess; the consumer writes it once", msg_id)

    async def _idle(self, stop: asyncio.Event) -> None:
        """Nothing to send: wait for the file to change. A confirmed position not
        yet on disk is written once no line came for its interval (not after
        every line: that would put two fsyncs in each line's path)."""
        self.store.flush_due()
        self._note_file()
        timeout = self.store.min_interval if self.store.pending else POLL_SECONDS
        await self._wait(stop, timeout)

    def _count(self, chunk: Chunk) -> None:
        self.counters.lines += chunk.lines
        self.counters.bytes += chunk.end - chunk.start
        self.counters.messages += 1

    def metrics(self) -> list:
        """Samples for fshipper.metrics, read when scraped."""
        from .health import lag_bytes

        c, position = self.counters, self.store.confirmed()
        lag = lag_bytes(self.settings.shipper_file or "", position)
        return [
            ("fshipper_producer_lines", "counter", "lines confirmed by the server", c.lines),
            ("fshipper_producer_bytes", "counter", "bytes of those lines, newlines included", c.bytes),
            ("fshipper_producer_messages", "counter", "messages confirmed by the server", c.messages),
            ("fshipper_producer_publish_retries", "counter",
             "messages published again (no confirmation in time, or a failed one)", c.retries),
            ("fshipper_producer_duplicates", "counter",
             "'duplicate' answers (the message is sent again under an unguessable id)", c.duplicates),
            ("fshipper_producer_confirmed_position_bytes", "gauge",
             "confirmed byte offset in the file being read", position.get("offset", 0)),
            ("fshipper_producer_lag_bytes", "gauge", "bytes of the file not yet confirmed",
             lag if lag is not None else float("nan")),
            ("fshipper_producer_last_confirmation_timestamp_seconds", "gauge",
             "when the server last confirmed data (Unix time; 0 never)", self.store.confirmed_at or 0),
            ("fshipper_producer_file_readable", "gauge", "1 if the followed file can be read, else 0",
             0 if self.follower is not None and self.follower.problem else 1),
            ("fshipper_producer_nats_connected", "gauge", "1 while connected to a NATS server",
             1 if self.nc is not None and self.nc.is_connected else 0),
        ]

    def _note_file(self) -> None:
        """Tell status whether the followed file can be read (written only on a change)."""
        self.status.problem("file", self.follower.problem)

    def _confirm(self) -> None:
        """Pop every confirmed message at the head; record the position reached."""
        confirmed = None
        while self.window and _stored(self.window[0].future):
            sent = self.window.popleft()
            confirmed = sent.chunk
            self._count(confirmed)
            if not sent.suffix:
                # Stored under its own id: the ids after it are new to the server
                # too, unless someone else used them first.
                self.stored_fresh, self.repeats_reported = True, False
        if confirmed is not None:
            self.backoff.reset()
            self.store.update(confirmed.ref, confirmed.end)

    async def _recover(self, js, stop: asyncio.Event, error: BaseException) -> None:
        """Send every unconfirmed message again, in order, after a back-off."""
        self._confirm()
        self._abandon()
        delay = self.backoff.next_delay()
        self.status.error(f"publish not confirmed: {str(error) or type(error).__name__}")
        if isinstance(error, nats.js.errors.NoStreamResponseError):
            log.warning("no stream answers for %s.> (not set up yet: run 'fshipper setup' or start a "
                        "consumer; or a cluster electing a leader; or, through a leaf node, its link to "
                        "the hub down); retry in %.1fs",
                        self.settings.shipper_subject, delay)
        else:
            log.warning("publish not confirmed (%s); %d message(s) will be sent again in %.1fs",
                        str(error) or type(error).__name__, len(self.window), delay)
        await sleep(delay, stop)
        if stop.is_set():
            return
        try:
            for sent in self.window:
                await self._publish(js, sent)
                self.counters.retries += 1
        except (nats.errors.Error, OSError) as e:
            log.debug("re-publish failed: %s", e)
            self._abandon()

    def _abandon(self) -> None:
        """Stop waiting for the confirmations of the window (it is sent again later)."""
        for sent in self.window:
            if not sent.future.done():
                sent.future.cancel()
            else:
                _failure(sent.future)  # read, or asyncio logs it as an error when it is dropped

    async def _settle(self) -> None:
        """On stop: wait a little for confirmations; the rest is sent again next start."""
        deadline = time.monotonic() + STOP_GRACE
        while self.window and time.monotonic() < deadline:
            head = self.window[0]
            try:
                await asyncio.wait_for(asyncio.shield(head.future), deadline - time.monotonic())
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                break
            if not _stored(head.future):
                break   # a duplicate: sent again next start
            self._confirm()
        self._abandon()
        if self.window:
            log.info("stopping with %d unconfirmed message(s); they are sent again at the next start",
                     len(self.window))

    # --- core NATS: at most once, as the original design ------------------------------

    async def _ship_core(self, stop: asyncio.Event) -> None:
        last: Optional[Chunk] = None   # the last chunk sent since the last flush
        unflushed = 0
        sent: list = []                # chunks since the last flush (counted once flushed)
        while not stop.is_set():
            chunk = self.follower.read(self.max_bytes)
            if chunk is not None:
                try:
                    await self.nc.publish(self.subject, chunk.payload, headers=self._headers(chunk))
                except (nats.errors.Error, OSError) as e:
                    log.warning("core publish failed (%s); lines of that message are lost", e)
                last, unflushed = chunk, unflushed + 1
                sent.append(chunk)
                if unflushed < self.settings.shipper_max_inflight:
                    continue
            if last is not None:
                try:
                    await self.nc.flush(timeout=ACK_TIMEOUT)
                except (nats.errors.Error, asyncio.TimeoutError) as e:
                    log.warning("flush failed: %s", e)
                self.store.update(last.ref, last.end)
                for flushed in sent:
                    self._count(flushed)
                last, unflushed, sent = None, 0, []
            if chunk is None:
                await self._idle(stop)
