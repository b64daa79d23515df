"""Exclusive ownership of a partition through NATS: claiming, fencing, takeover.

Each partition's durable consumer has a priority group with the pinned_client
policy (streams.consumer_config): the server hands the partition's messages to
one pull client at a time, the pinned one, and marks every message it delivers
with that client's pin (header Nats-Pin-Id). A client sends its pin back in
every pull request ("id"); a request with another pin gets status 423. When
the pinned client has sent no request for priority_timeout
(SHIPPER_FAILOVER_TIMEOUT = T), the server unpins it and pins whoever pulls
next: the standby, which pulls all the time and is handed nothing meanwhile.

Being pinned is not enough to write. A frozen owner (SIGSTOP, a VM pause, a
stuck NFS call) that wakes up still believes it is pinned, and a consumer
leader change inside the NATS cluster drops the pin at once, without waiting
for T. So writing takes a lease as well, kept on this process's monotonic
clock, with a guard G = T/2:

- A client may write only from G after its first message under a pin: any
  earlier owner's lease has ended by then.
- Its lease ends G after it sent the last request that the server is known to
  have taken under its pin: a message with the pin, or the request's normal
  end (408) for a request that carried the pin. The server held the pin at
  some moment after that request was sent, so any later pin is given later,
  and its holder writes G after that, after this lease has ended.

The consumer checks the lease before each group of file writes, before each
journal line and snapshot of the ledger, and after the journal line before it
acknowledges; what it holds when the lease lapses or the pin changes is
forgotten without touching any file (the next owner cuts it back from the
ledger). What remains is the moment between a check and the system calls it
guards (one batch's writes: milliseconds); a process frozen exactly there
writes late. Closing that would take fencing in the storage itself. A takeover after kill -9 or a freeze
takes at most T (the server's timeout) + G + 1 s (one pull request).

Output files and the partition's ledger live together on the storage that
SHIPPER_DIRECTORY names (shared by owner and standbys, e.g. NFS): the ledger of
a partition is `<SHIPPER_DIRECTORY>/.fshipper/<consumer>.ledger` (no host
directory starts with '.'), so the new owner continues exactly where the old
one's last commit ended.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import time
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Set, Tuple

import nats.errors
from nats.aio.msg import Msg

from . import streams, wire
from .config import Settings
from .early import EarlyHold, size
from .ledger import Ledger, LedgerError
from .util import atomic_write

if TYPE_CHECKING:
    from .consumer import Consumer

log = logging.getLogger(__name__)

PIN_HEADER = "Nats-Pin-Id"
WRONG_PIN = "423"
# A request's normal end: the server took it, its pin checked, and kept it until it
# expired. (Some 409s are sent before the pin is checked: they prove nothing.)
ENDED = ("408",)
LEDGER_DIRECTORY = ".fshipper"
MAX_OPEN_REQUESTS = 1024
HOLD_MAX = 10000   # messages a new owner holds through its guard at most (ack_wait is 10 s),
HOLD_BYTES = 4 << 20    # and bytes (payloads and headers); one open request may add to it,
GUARD_FETCH_BYTES = 1 << 20   # which brings at most this much while this client is not the owner
MOVED_RECHECK = 1.0     # seconds between reads of a moved producer's old partition ledger
CONFIRM_EVERY = 0.2     # seconds between questions to the server about the pin at most


class FencedError(Exception):
    """This process may not write the partition now (lease lapsed or pin lost)."""


def enabled(settings: Settings) -> bool:
    return streams.failover(settings)


def ledger_directory(settings: Settings) -> str:
    """Where partition ledgers live: next to the files they describe."""
    return os.path.join(settings.shipper_directory, LEDGER_DIRECTORY)


def partition_ledger(settings: Settings, number: int, fence: Optional[Callable[[], None]] = None) -> Ledger:
    return Ledger(ledger_directory(settings), streams.consumer_name(settings, number), fence)


def partition_counts(settings: Settings) -> Set[int]:
    """The partition counts a host's partition is computed with: SHIPPER_PARTITIONS,
    and while resharding SHIPPER_PARTITIONS_BEFORE."""
    counts = {settings.shipper_partitions}
    if settings.shipper_partitions_before is not None:
        counts.add(settings.shipper_partitions_before)
    return counts


def misplaced(settings: Settings, host: str, number: int) -> str:
    """Why a host's message on another partition than its own is refused: whoever
    owns its own partition writes that host; a second writer would cut or repeat
    its lines."""
    counts = sorted(partition_counts(settings))
    before = settings.shipper_partitions_before
    return (f"host {host} belongs to partition {' or '.join(str(wire.partition(host, n)) for n in counts)}, "
            f"not {number} (SHIPPER_PARTITIONS={settings.shipper_partitions}"
            + (f", SHIPPER_PARTITIONS_BEFORE={before}" if before is not None else "") + ")")


def partition_consumers(parent: "Consumer") -> List["Consumer"]:
    """One Consumer per partition, each with its own claim, ledger and share of
    open files; they count into the parent's counters and status."""
    from .consumer import Consumer

    settings = parent.settings
    partitions = settings.shipper_read_partitions
    parent.sink.reserve_descriptors()  # for all of them: their shares add up to SHIPPER_MAX_OPEN_FILES
    share = max(16, parent.sink.max_open // len(partitions))
    os.makedirs(ledger_directory(settings), 0o750, exist_ok=True)
    migrate(settings)
    log.info("failover: taking over a partition within %.1fs of its owner's end "
             "(SHIPPER_FAILOVER_TIMEOUT=%gs)", takeover_bound(settings.shipper_failover_timeout),
             settings.shipper_failover_timeout)
    owners = []
    for number in partitions:
        owner = Consumer(settings, counters=parent.counters, claim=Claim(settings.shipper_failover_timeout),
                         partition=number, max_open=share)
        owner.status = parent.status
        owners.append(owner)
    return owners


MIGRATED = ".migrated"


def migrate(settings: Settings) -> None:
    """Once, after an upgrade to failover: the ledger this consumer kept in
    SHIPPER_STATE_DIR becomes the partition ledgers next to the files, each with
    its own hosts' records and files, for every partition that has none yet. Then
    the old files are renamed (*.migrated), so neither this nor a later run
    without failover reads them again."""
    old = Ledger(settings.shipper_state_dir, settings.name)
    if not any(os.path.exists(p) for p in (old.path, old.journal_path)):
        return
    targets = {n: partition_ledger(settings, n) for n in settings.shipper_read_partitions}
    targets = {n: t for n, t in targets.items()
               if not any(os.path.exists(p) for p in (t.path, t.journal_path))}
    if targets:
        old.read()
    counts = partition_counts(settings)
    carried = []
    for number, ledger in sorted(targets.items()):
        def here(host: str) -> bool:
            return bool(host) and number in {wire.partition(host, n) for n in counts}
        sources = {k: v for k, v in old.sources.items() if here(k.rpartition(" ")[0])}
        files = {p: n for p, n in old.files.items() if here(_host_of(settings, p))}
        ledger.carry_over(sources, files)
        carried.append(f"p{number}: {len(sources)} producer(s), {len(files)} file(s)")
    for path in (old.path, old.journal_path):
        if os.path.exists(path):
            os.replace(path, path + MIGRATED)
    log.info("ledger %s carried over to %s (%s); the old one kept as %s%s", old.path,
             ledger_directory(settings), "; ".join(carried) or "every partition had its own already",
             os.path.basename(old.path), MIGRATED)


def _host_of(settings: Settings, path: str) -> str:
    """The host an output path belongs to (<SHIPPER_DIRECTORY>/<host>/...), "" if none."""
    relative = os.path.relpath(path, settings.shipper_directory)
    return "" if relative.startswith("..") else relative.split(os.sep)[0]


def takeover_bound(timeout: float) -> float:
    """The server's timeout, the guard, and one pull request (Tenure.fetch_wait)."""
    return timeout * 1.5 + min(1.0, timeout / 8)


class Claim:
    """One partition's claim: the pin the server gave this process, and the lease."""

    def __init__(self, timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = timeout / 2
        self.clock = clock
        self.pin: Optional[str] = None
        self.epoch = 0              # changes whenever the pin does (or is lost)
        self.since = 0.0            # when the first message under this pin arrived
        self.until = 0.0            # writing is safe before this
        # reply subject -> [sent at, pin it carried, messages it may still bring], oldest first
        self._requests: "collections.OrderedDict[str, list]" = collections.OrderedDict()
        self._unpinned_logged = False
        self._renewed = False

    # --- what the puller tells it ---------------------------------------------------

    def fields(self) -> Dict[str, str]:
        """What a pull request carries."""
        return {"group": streams.GROUP, "id": self.pin} if self.pin else {"group": streams.GROUP}

    def sent(self, reply: str, batch: int) -> None:
        self._requests[reply] = [self.clock(), self.pin, batch]
        while len(self._requests) > MAX_OPEN_REQUESTS:  # ended without a word (by bytes): keep memory bounded
            self._requests.popitem(last=False)

    def status(self, reply: str, code: str) -> None:
        """The server ended request `reply`; those sent before it ended before it
        (the same wait, received earlier)."""
        sent = None
        if reply in self._requests:
            while sent is None:
                key, request = self._requests.popitem(last=False)
                sent = request if key == reply else None
        if code == WRONG_PIN:
            # About the pin we hold (or a request we no longer know: to be safe, the same);
            # a late answer to a request sent under an earlier pin changes nothing.
            if self.pin is not None and (sent is None or sent[1] == self.pin):
                log.warning("lost the partition: the server pinned another client (pin %s ended)", self.pin)
                self._change(None)
            return
        if sent is not None and code in ENDED and sent[1] is not None and sent[1] == self.pin:
            self.until = max(self.until, sent[0] + self.guard)

    def delivered(self, msg: Msg) -> bool:
        """A message arrived; False if it must be dropped (not delivered under a pin)."""
        pin = msg.headers.get(PIN_HEADER) if msg.headers else None
        if not pin:
            if not self._unpinned_logged:
                self._unpinned_logged = True
                log.error("a message came without %s: the consumer has no priority group "
                          "(run 'fshipper setup'); nothing is written meanwhile", PIN_HEADER)
            return False
        now = self.clock()
        if pin != self.pin:
            self._change(pin)
            self.since = now
        if self._requests:
            # The server serves a client's requests in order, each up to its batch:
            # this message answers the oldest one not known to have ended (or an
            # older one, if the server ended it early: an earlier time, so safe),
            # and that one was sent before the server held the pin. A message only
            # keeps a lease that still runs, or starts the first one of a pin: one
            # read after the lease ran out may have waited in the socket while this
            # process was frozen, and proves nothing about a request sent since it
            # woke up. A lapsed lease comes back only with a request the server
            # ended under the pin (status).
            reply, request = next(iter(self._requests.items()))
            if now < self.until or not self._renewed:
                self.until = max(self.until, request[0] + self.guard)
                self._renewed = True
            request[2] -= 1
            if request[2] <= 0:
                del self._requests[reply]
        return True

    def confirmed(self, sent: float, pinned: Optional[str]) -> None:
        """The server said, in answer to a request sent at `sent` (this clock), which
        client it has pinned: ours renews the lease as a request it ended under the
        pin does (the pin was ours at some moment after `sent`); another, or none,
        means this client has lost the partition."""
        if self.pin is None:
            return
        if pinned == self.pin:
            self.until = max(self.until, sent + self.guard)
            self._renewed = True
        else:
            log.warning("lost the partition: the server has %s pinned, not %s",
                        f"client {pinned}" if pinned else "no client", self.pin)
            self._change(None)

    def _change(self, pin: Optional[str]) -> None:
        self.pin = pin
        self.epoch += 1
        self.until = 0.0
        self._renewed = False   # no lease under this pin yet

    # --- what the consumer asks --------------------------------------------------------

    def writable(self) -> bool:
        now = self.clock()
        return self.pin is not None and self.since + self.guard <= now < self.until

    def waiting(self) -> float:
        """Seconds until the guard after a new pin has passed (0 if it has)."""
        return max(0.0, self.since + self.guard - self.clock()) if self.pin else 0.0

    def check(self) -> None:
        if not self.writable():
            raise FencedError("not the owner of this partition now")


def last_written_here(ledger: Ledger, files: Dict[str, int]) -> Dict[str, int]:
    """The files this partition may cut back to its record: those no other
    partition's ledger records at the same length or longer. A host that moved to
    another partition (resharding) has its file in both ledgers; whatever lies
    beyond this partition's record may then be the other's, written or committed,
    and is not ours to cut."""
    directory = os.path.dirname(ledger.path)
    others: Dict[str, int] = {}
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".ledger") and
                 os.path.join(directory, n) != ledger.path]
    except OSError:
        names = []
    for name in names:
        other = Ledger(directory, name[:-len(".ledger")])
        try:
            other.read()
        except (OSError, LedgerError) as e:
            log.warning("%s: cannot read: %s; its files are not cut here", other.path, e)
            return {}
        for path, length in other.files.items():
            if path in files:
                others[path] = max(others.get(path, 0), length)
    kept = {p: n for p, n in files.items() if n > others.get(p, -1)}
    for path in sorted(set(files) - set(kept)):
        log.info("%s: recorded by another partition too, at %d bytes (this one: %d): not cut",
                 path, others[path], files[path])
    return kept


def pin_file(settings: Settings, consumer: str) -> str:
    """Where this process notes the pin it holds: in its own state directory, which
    only one process at a time can use (daemon.StateLock)."""
    return os.path.join(settings.shipper_state_dir, f"{consumer}.pin")


def remember(path: str, pin: str) -> None:
    try:
        atomic_write(path, pin.encode())
    except OSError as e:
        log.warning("%s: cannot note the pin: %s", path, e)


async def reclaim(nc, settings: Settings, consumer: str) -> None:
    """At start: if the server still holds the partition for the pin the previous run
    of this consumer noted, that run is dead (its state lock is ours now), so the
    partition is released at once instead of after the timeout."""
    path = pin_file(settings, consumer)
    try:
        with open(path) as f:
            pin = f.read().strip()
    except OSError:
        return
    try:
        answer = await nc.request(f"$JS.API.CONSUMER.INFO.{settings.stream}.{consumer}", b"", timeout=2)
        groups = json.loads(answer.data).get("priority_groups") or []
    except (nats.errors.Error, OSError, ValueError):
        return
    if any(g.get("pinned_client_id") == pin for g in groups):
        log.info("%s: the previous run of this consumer held the partition (pin %s); released",
                 consumer, pin)
        await release(nc, settings.stream, consumer)


async def release(nc, stream: str, consumer: str) -> None:
    """A graceful stop hands the partition on at once instead of after the timeout."""
    try:
        answer = await nc.request(f"$JS.API.CONSUMER.UNPIN.{stream}.{consumer}",
                                  json.dumps({"group": streams.GROUP}).encode(), timeout=2)
        error = json.loads(answer.data).get("error")
        if error:
            log.debug("unpin %s: %s", consumer, error.get("description"))
    except (nats.errors.Error, OSError, ValueError) as e:
        log.debug("unpin %s: %s", consumer, e)


class Tenure:
    """A partition Consumer's time as the owner: its state is loaded (files cut
    back to the ledger) once writing is safe under a new pin, and forgotten,
    without touching any file, when the pin changes or the lease lapses."""

    def __init__(self, consumer: "Consumer", claim: Claim, number: int) -> None:
        self.consumer = consumer
        self.claim = claim
        self.number = number
        self.epoch: Optional[int] = None   # the claim's epoch the state was loaded under
        self.held: List[Msg] = []          # delivered within a new pin's guard, in order
        self.held_bytes = 0
        self.full = False                  # held all it may: no more is asked for within the guard
        self.moved: Dict[str, float] = {}  # producers that moved here (resharding) -> last read there
        self._confirmed_at = -CONFIRM_EVERY    # when the server was last asked for the pin

    def fetch_wait(self, longest: float) -> float:
        """An owner's requests renew its lease: several within each guard period."""
        return min(longest, self.claim.guard / 4)

    def loaded(self) -> bool:
        return self.epoch is not None

    async def owning(self) -> bool:
        claim, consumer = self.claim, self.consumer
        if claim.pin is not None and claim.waiting() == 0 and not claim.writable():
            await self.confirm()   # the lease ran out (a busy loop, a long commit) but not the pin?
        if self.epoch is not None and self.epoch != claim.epoch:
            log.warning("partition %d: no longer the owner; %d message(s) given back unacknowledged",
                        self.number, len(consumer._uncommitted))
            await self.abandon()
        if self.epoch is None and claim.writable():
            try:
                self.forget()  # what the last tenure (or an unfinished load) left in memory
                consumer.open_state()
            except (OSError, LedgerError, FencedError) as e:
                log.error("partition %d: cannot load the state of the partition: %s", self.number, e)
                return False
            self.epoch = claim.epoch
            name = streams.consumer_name(consumer.settings, self.number)
            remember(pin_file(consumer.settings, name), claim.pin)
            log.info("partition %d: owner now (pin %s); written up to the ledger in %s",
                     self.number, claim.pin, consumer.ledger.path)
        return self.epoch is not None and claim.writable()

    async def confirm(self, margin: float = 0.0) -> None:
        """Ask the server which client it has pinned (CONSUMER.INFO, answered by the
        consumer's leader), unless the lease runs for `margin` seconds more. While
        a backlog fills every pull request, no request ends with 408: without this,
        a lease that ran out while the loop was busy (a commit's fsyncs of a large
        batch take seconds) would never come back, and messages read late prove
        nothing (Claim.delivered)."""
        claim = self.claim
        now = claim.clock()
        if claim.pin is None or claim.until - now > margin or now - self._confirmed_at < CONFIRM_EVERY:
            return
        self._confirmed_at = now
        settings = self.consumer.settings
        name = streams.consumer_name(settings, self.number)
        try:
            answer = await self.consumer.nc.request(f"$JS.API.CONSUMER.INFO.{settings.stream}.{name}",
                                                    b"", timeout=min(2.0, claim.guard / 2))
            info = json.loads(answer.data)
        except (nats.errors.Error, OSError, ValueError) as e:
            log.debug("partition %d: cannot ask which client is pinned: %s", self.number, e)
            return
        if "error" in info:
            return
        pinned = next((g.get("pinned_client_id") for g in info.get("priority_groups") or []
                       if g.get("group") == streams.GROUP), None)
        claim.confirmed(now, pinned)

    async def lapsed(self, number: int, msgs: List[Msg]) -> None:
        """The fence stopped a write or a commit: give everything back."""
        log.warning("partition %d: ownership lapsed; %d message(s) given back unacknowledged",
                    number, len(self.consumer._uncommitted) + len(msgs))
        await self.abandon()
        await self.give_back(msgs)

    async def abandon(self) -> None:
        """Forget, and hand the written but unacknowledged messages back at once (from a
        client that lost the pin, a nak only brings a redelivery forward)."""
        from .consumer import _reply

        replies = self.consumer._uncommitted
        early = self.consumer.early.take_all()
        self.forget()
        for reply in replies:
            await _reply(self.consumer.nc.publish(reply, b"-NAK"))
        await self.give_back(self.take_held() + early)

    def forget(self) -> None:
        """Drop what this tenure holds in memory, touching no file: the next owner cuts
        back whatever was written and not recorded. Unacknowledged messages come again."""
        consumer = self.consumer
        consumer.sink.forget()
        consumer.ledger.close()
        consumer.ledger = partition_ledger(consumer.settings, self.number, consumer.ledger.fence)
        consumer._uncommitted = []
        consumer._tally = [0, 0, 0]
        consumer._early_since.clear()
        consumer.early = EarlyHold()  # what it held comes again after ack_wait
        self.moved.clear()
        self.epoch = None

    async def hold_or_give_back(self, msgs: List[Msg]) -> None:
        """Not the owner yet. Within a new pin's guard the messages wait here, in the
        order they came, until it has passed (given back, they would come again in
        any order, and a host's later ones would have to wait for them). Once
        HOLD_MAX or HOLD_BYTES is reached the caller asks for no more until the
        guard has passed (`wait_out_guard`): what the open request still brings is
        held too. With no guard running (this client lost the pin) all of it goes back."""
        if self.claim.waiting() <= 0:
            await self.give_back(self.take_held() + msgs)
            return
        self.held += msgs
        self.held_bytes += sum(size(m) for m in msgs)
        self.full = len(self.held) >= HOLD_MAX or self.held_bytes >= HOLD_BYTES

    async def wait_out_guard(self, puller, stop) -> None:
        """Held all it may: wait for the guard to pass without asking for more (at most
        the guard, well within the server's timeout, so the pin stays)."""
        if self.full and self.claim.waiting() > 0:
            late = await puller.hold(self.claim.waiting(), stop)
            self.held += late
            self.held_bytes += sum(size(m) for m in late)

    def take_held(self) -> List[Msg]:
        held, self.held, self.held_bytes, self.full = self.held, [], 0, False
        return held

    async def give_back(self, msgs: List[Msg]) -> None:
        """Not the owner, or not yet: the messages go back, the owner's soon (after the
        guard of a new pin) or whoever is pinned (naks from a client that lost the pin
        only bring a redelivery forward)."""
        from .consumer import _reply

        delay = max(0.2, self.claim.waiting())
        for msg in msgs:
            await _reply(msg.nak(delay=delay))

    def moved_here(self, host: str, origin: str) -> bool:
        """While resharding: a producer this partition has no record of may have moved
        here from the host's partition under the other count. Its ledger (on the shared
        storage, next to ours) says where the producer was; adopt that record. It is
        read again (at most every MOVED_RECHECK) while the producer's messages here
        are early: the old partition may have written and committed more of it after
        the first read."""
        settings, ledger = self.consumer.settings, self.consumer.ledger
        counts = partition_counts(settings)
        key = f"{host} {origin}"
        mine = ledger.last(host, origin)
        if len(counts) < 2 or (mine is not None and key not in self.moved):
            return False
        now = time.monotonic()
        if now - self.moved.get(key, -MOVED_RECHECK) < MOVED_RECHECK:
            return False
        self.moved[key] = now
        for count in counts:
            other = wire.partition(host, count)
            if other == self.number:
                continue
            record = partition_ledger(settings, other)
            try:
                record.read()
            except (OSError, LedgerError) as e:
                log.warning("host %s: cannot read partition %d's ledger: %s", host, other, e)
                continue
            last = record.sources.get(key)
            if last is not None and (mine is None or (last[0], last[1]) > (mine[0], mine[1])):
                log.info("host %s: moved from partition %d to %d; going on from its record there "
                         "(file %d byte %d)", host, other, self.number, last[0], last[1])
                ledger.adopt(host, origin, last)
                return True
        return False

    def moved_due(self, keys) -> Set[str]:
        """Producers that moved here whose old partition's record is due to be read again."""
        now = time.monotonic()
        return {k for k in keys if k in self.moved and now - self.moved[k] >= MOVED_RECHECK}

    async def reclaim(self, consumer: str) -> None:
        await reclaim(self.consumer.nc, self.consumer.settings, consumer)

    async def release(self, consumer: str) -> None:
        if self.claim.writable():
            await release(self.consumer.nc, self.consumer.settings.stream, consumer)
