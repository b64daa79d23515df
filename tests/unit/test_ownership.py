"""The ownership rules that need no server: the lease a pin gives, the settings,
the consumer configuration with its priority group, and the partition check."""

import json
import os
import time
from typing import Optional

import pytest
from nats.aio.client import ServerVersion
from nats.aio.msg import Msg

from fshipper import config, streams, wire
from fshipper.config import ConfigError
from fshipper.consumer import HELD, Consumer
from fshipper.ownership import PIN_HEADER, Claim, FencedError

T = 5.0          # SHIPPER_FAILOVER_TIMEOUT
G = T / 2        # the guard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def message(pin=None, subject="shipper.p0.web1") -> Msg:
    return Msg(None, subject=subject, reply="", data=b"x", headers={PIN_HEADER: pin} if pin else None)


def test_a_new_pin_writes_only_after_the_guard_and_within_its_lease():
    clock = Clock()
    claim = Claim(T, clock)
    assert claim.fields() == {"group": streams.GROUP} and not claim.writable()
    claim.sent("r.1", 100)
    clock.now += 0.01
    assert claim.delivered(message("pinA"))
    assert claim.pin == "pinA" and claim.fields() == {"group": streams.GROUP, "id": "pinA"}
    assert not claim.writable()                  # the guard: an earlier owner's lease may run
    clock.now += 0.5
    claim.sent("r.2", 100)                            # the next request carries the pin ...
    clock.now += 1.0
    claim.status("r.2", "408")                   # ... and the server took it: the lease is renewed
    assert claim.until == pytest.approx(100.51 + G)
    assert not claim.writable()                  # still within the guard
    clock.now = 100.01 + G
    assert claim.writable() and claim.waiting() == 0
    clock.now = 100.51 + G                       # no request proven since: the lease has run out
    assert not claim.writable()
    with pytest.raises(FencedError):
        claim.check()


def test_messages_renew_the_lease_from_the_request_they_answer():
    clock = Clock()
    claim = Claim(T, clock)
    claim.sent("r.1", 2)
    claim.delivered(message("pinA"))
    clock.now = 102.0
    claim.sent("r.2", 2)         # r.1 still open: its last message may come after r.2 was sent
    clock.now = 102.3
    claim.delivered(message("pinA"))
    assert claim.until == pytest.approx(100 + G)            # r.1's: sent at 100
    claim.delivered(message("pinA"))
    assert claim.until == pytest.approx(102 + G)            # r.2's (r.1 brought its two)
    clock.now = 102.6
    assert claim.writable()
    claim.sent("r.3", 2)
    clock.now += 0.1
    claim.status("r.3", "408")   # r.3 ended, so did r.2 before it
    claim.sent("r.4", 2)
    claim.delivered(message("pinA"))
    assert claim.until == pytest.approx(102.7 + G)          # r.4's


def test_423_or_another_pin_ends_the_tenure():
    clock = Clock()
    claim = Claim(T, clock)
    claim.sent("r.1", 100)
    claim.delivered(message("pinA"))
    epoch = claim.epoch
    clock.now += G
    claim.sent("r.2", 100)
    claim.status("r.2", "408")
    claim.sent("r.3", 100)
    assert claim.writable()
    claim.status("r.3", "423")   # the server pinned another client
    assert claim.pin is None and claim.epoch != epoch and not claim.writable()
    assert claim.fields() == {"group": streams.GROUP}
    claim.sent("r.4", 100)
    claim.delivered(message("pinB"))
    assert claim.pin == "pinB" and not claim.writable()   # a new guard


def test_a_request_sent_without_the_pin_proves_nothing():
    clock = Clock()
    claim = Claim(T, clock)
    claim.sent("r.1", 100)            # no pin yet
    claim.delivered(message("pinA"))
    clock.now += G
    claim.status("r.1", "408")
    assert claim.until == pytest.approx(100 + G) and not claim.writable()


def test_a_message_without_a_pin_is_dropped():
    claim = Claim(T, Clock())
    assert not claim.delivered(message(None))
    assert claim.pin is None


BASE = {"fshipper.env": "NATS_URL=nats://n1:4222\nSHIPPER_SUBJECT=shipper\n",
        "consumer.env": "SHIPPER_OUTPUT=app.log.%Y%m%d\nSHIPPER_DIRECTORY=/srv/out\n"}


def load(tmp_path, environ=None, role="consumer"):
    for name, text in BASE.items():
        (tmp_path / name).write_text(text)
    return config.load(role, None, str(tmp_path), environ or {}).settings


def test_failover_settings(tmp_path):
    s = load(tmp_path)
    assert s.shipper_failover_timeout == 5 and s.shipper_consumer_group is None
    assert streams.failover(s)
    assert load(tmp_path, {"SHIPPER_FAILOVER_TIMEOUT": "0"}).shipper_failover_timeout == 0
    for bad in ("1s", "2h", "x"):
        with pytest.raises(ConfigError, match="SHIPPER_FAILOVER_TIMEOUT"):
            load(tmp_path, {"SHIPPER_FAILOVER_TIMEOUT": bad})
    for bad in ("a.b", "a b", "x" * 33, "é"):
        with pytest.raises(ConfigError, match="SHIPPER_CONSUMER_GROUP"):
            load(tmp_path, {"SHIPPER_CONSUMER_GROUP": bad})


def test_reading_a_partition_no_host_is_on_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="SHIPPER_READ_PARTITIONS has partition 2.*SHIPPER_PARTITIONS=0"):
        load(tmp_path, {"SHIPPER_READ_PARTITIONS": "0,2"})
    with pytest.raises(ConfigError, match="partition 4"):
        load(tmp_path, {"SHIPPER_READ_PARTITIONS": "4", "SHIPPER_PARTITIONS": "4"})
    assert load(tmp_path, {"SHIPPER_READ_PARTITIONS": "5", "SHIPPER_PARTITIONS": "4",
                           "SHIPPER_PARTITIONS_BEFORE": "8"}).shipper_partitions_before == 8


def test_consumer_names_and_the_priority_group(tmp_path):
    s = load(tmp_path, {"SHIPPER_PARTITIONS": "4"})
    c = streams.consumer_config(s, 3)
    assert c.durable_name == c.name == "SHIPPER_p3" and c.filter_subject == "shipper.p3.>"
    assert c.priority_groups == [streams.GROUP] and c.priority_policy == "pinned_client"
    assert c.as_dict()["priority_timeout"] == 5_000_000_000
    grouped = load(tmp_path, {"SHIPPER_CONSUMER_GROUP": "site-b", "SHIPPER_FAILOVER_TIMEOUT": "0"})
    plain = streams.consumer_config(grouped, 0)
    assert plain.durable_name == "SHIPPER_site-b_p0" and "priority_groups" not in plain.as_dict()
    assert streams.plan_consumer(c, c, False).action == "unchanged"
    off = streams.plan_consumer(plain.evolve(priority_groups=["fshipper"]), plain, False)
    assert off.action == "updated" and off.changes == ["priority_groups fshipper -> None"]   # turned off
    assert streams.plan_consumer(c.evolve(priority_groups=None, priority_policy=None, priority_timeout=None),
                                 c, False).action == "updated"                            # turned on


def test_an_old_server_is_one_clear_line(tmp_path):
    s = load(tmp_path)
    streams.check_server((2, 11, 0), s)
    with pytest.raises(streams.ServerTooOldError, match=r"nats-server 2\.10\.7 has no priority groups.*2\.11\.0"):
        streams.check_server((2, 10, 7), s)
    streams.check_server((2, 10, 7), load(tmp_path, {"SHIPPER_FAILOVER_TIMEOUT": "0"}))
    streams.check_server(ServerVersion("2.15.1"), s)             # as nats-py reports it
    with pytest.raises(streams.ServerTooOldError):
        streams.check_server(ServerVersion("2.10.22"), s)


def host_on(partition: int, partitions: int) -> str:
    return next(h for h in (f"web{n}.example.net" for n in range(1000)) if wire.partition(h, partitions) == partition)


def test_a_host_on_another_partition_than_its_own_is_refused(tmp_path):
    s = load(tmp_path, {"SHIPPER_PARTITIONS": "2", "SHIPPER_READ_PARTITIONS": "0,1",
                        "SHIPPER_DIRECTORY": str(tmp_path / "out"), "SHIPPER_STATE_DIR": str(tmp_path / "state")})
    consumer = Consumer(s)
    p0 = host_on(0, 2)
    stored = f"$JS.ACK.SHIPPER.SHIPPER_p1.1.1.1.{time.time_ns()}.0"
    wrong = Msg(None, subject=f"shipper.p1.{p0}", reply=stored, data=b"x")
    assert consumer._decide(wrong) is None
    assert consumer.refusals.by_reason == {"partition": 1} and consumer.refusals.total == 1
    right = Msg(None, subject=f"shipper.p0.{p0}", reply=stored, data=b"x")
    assert consumer._decide(right) == 2


def test_while_resharding_the_old_partition_is_accepted_too(tmp_path):
    s = load(tmp_path, {"SHIPPER_PARTITIONS": "4", "SHIPPER_PARTITIONS_BEFORE": "2",
                        "SHIPPER_READ_PARTITIONS": "0,1,2,3", "SHIPPER_DIRECTORY": str(tmp_path / "out"),
                        "SHIPPER_STATE_DIR": str(tmp_path / "state")})
    consumer = Consumer(s)
    host = next(h for h in (f"web{n}.example.net" for n in range(1000))
                if wire.partition(h, 4) != wire.partition(h, 2))
    stored = f"$JS.ACK.SHIPPER.SHIPPER_p1.1.1.1.{time.time_ns()}.0"
    for n in (2, 4):
        msg = Msg(None, subject=wire.subject("shipper", host, n), reply=stored, data=b"x")
        assert consumer._decide(msg) == 2
    others = set(range(4)) - {wire.partition(host, 4), wire.partition(host, 2)}
    msg = Msg(None, subject=f"shipper.p{min(others)}.{host}", reply=stored, data=b"x")
    assert consumer._decide(msg) is None and consumer.refusals.by_reason == {"partition": 1}


def resharding(tmp_path):
    """Settings while resharding 2 -> 4, a host whose partition changes, and the old
    partition's ledger recording 100 bytes of the host's producer origin-1."""
    from fshipper.ledger import Ledger
    from fshipper.ownership import ledger_directory

    s = load(tmp_path, {"SHIPPER_PARTITIONS": "4", "SHIPPER_PARTITIONS_BEFORE": "2",
                        "SHIPPER_READ_PARTITIONS": "0,1,2,3", "SHIPPER_DIRECTORY": str(tmp_path / "out"),
                        "SHIPPER_STATE_DIR": str(tmp_path / "state")})
    host = next(h for h in (f"web{n}.example.net" for n in range(1000))
                if wire.partition(h, 4) != wire.partition(h, 2))
    before = Ledger(ledger_directory(s), streams.consumer_name(s, wire.partition(host, 2)))
    before.load()
    before.advance(host, wire.Position("origin-1", 0, 0, 100, first=(0, 0)))
    before.commit({})
    return s, host, before


def moved_message(host: str, pos: wire.Position) -> Msg:
    stored = f"$JS.ACK.SHIPPER.SHIPPER_p{wire.partition(host, 4)}.1.1.1.{time.time_ns()}.0"
    return Msg(None, subject=wire.subject("shipper", host, 4), reply=stored, data=b"123456789",
               headers=wire.headers(host, pos, False))


def test_while_resharding_a_moved_producer_goes_on_from_its_old_partitions_ledger(tmp_path):
    s, host, before = resharding(tmp_path)
    before.close()
    consumer = Consumer(s, claim=Claim(T), partition=wire.partition(host, 4))
    msg = moved_message(host, wire.Position("origin-1", 0, 100, 110, first=(0, 0)))
    assert consumer._decide(msg) == 10          # written: it continues where the old partition ended
    msg = moved_message(host, wire.Position("origin-2", 0, 100, 110, first=(0, 0)))
    assert consumer._decide(msg) == HELD   # no record anywhere: waits for its chain's start


def test_a_moved_producer_whose_old_partition_commits_more_later_goes_on_from_there(tmp_path, monkeypatch):
    """The old partition had written a host's last lines but not yet committed them
    when the new one first read its ledger: the new one adopted a record that was
    behind, and the producer's next lines, after the written ones, waited for ever."""
    from fshipper import ownership

    monkeypatch.setattr(ownership, "MOVED_RECHECK", 0.0)
    s, host, before = resharding(tmp_path)
    consumer = Consumer(s, claim=Claim(T), partition=wire.partition(host, 4))
    msg = moved_message(host, wire.Position("origin-1", 0, 110, 120, first=(0, 0)))  # 100..110 went to the old one
    assert consumer._decide(msg) == HELD
    assert consumer._held_due() == {f"{host} origin-1"}   # read again, although nothing came
    before.advance(host, wire.Position("origin-1", 0, 100, 110, first=(0, 0)))
    before.commit({})
    before.close()
    assert consumer._decide(msg) == 10      # the old partition's newer record: written on from 110


def test_a_file_another_partition_recorded_as_long_or_longer_is_not_cut(tmp_path):
    from fshipper.ledger import Ledger
    from fshipper.ownership import last_written_here

    d = str(tmp_path)
    mine, theirs = Ledger(d, "SHIPPER_p0"), Ledger(d, "SHIPPER_p1")
    for ledger in (mine, theirs):
        ledger.load()
    mine.commit({"/out/a/f": 100, "/out/moved/f": 100, "/out/moved-back/f": 300})
    theirs.commit({"/out/moved/f": 100, "/out/moved-back/f": 200, "/out/other/f": 50})
    assert last_written_here(mine, mine.files) == {"/out/a/f": 100, "/out/moved-back/f": 300}


class Client:
    """What a consumer publishes on (acknowledgements, naks), recorded."""

    def __init__(self, pinned: Optional[str] = None) -> None:
        self.sent = []
        self.pinned = pinned   # the client the server has pinned, as CONSUMER.INFO says

    async def publish(self, subject, payload=b"", reply="", headers=None):
        self.sent.append((subject, payload))

    async def request(self, subject, payload=b"", timeout=None):
        assert subject.startswith("$JS.API.CONSUMER.INFO."), subject
        group = {"group": streams.GROUP, **({"pinned_client_id": self.pinned} if self.pinned else {})}
        return Msg(self, subject="_INBOX.x", data=json.dumps({"priority_groups": [group]}).encode())


def pinned(claim: Claim, clock: Clock, pin: str) -> None:
    """Make `claim` the writable owner under `pin` (guard passed, lease fresh)."""
    claim.sent("r.1", 100)
    claim.delivered(message(pin))
    clock.now += 0.5
    claim.sent("r.2", 100)
    clock.now += G - 0.25
    claim.status("r.2", "408")
    assert claim.writable()


def test_an_owner_that_lost_its_lease_writes_and_acknowledges_nothing_and_cuts_nothing(tmp_path):
    import asyncio

    from fshipper.util import Backoff

    s = load(tmp_path, {"SHIPPER_DIRECTORY": str(tmp_path / "out"), "SHIPPER_STATE_DIR": str(tmp_path / "state")})
    host = "web1.example.net"
    clock = Clock()
    old = Consumer(s, claim=Claim(T, clock), partition=0)
    old.nc = Client(pinned="pinA")
    loop = asyncio.new_event_loop()
    offset = [0]

    def msg(n: int, pin: str) -> Msg:
        data = b"line %d" % n
        pos = wire.Position("o", 0, offset[0], offset[0] + len(data) + 1, first=(0, 0))
        offset[0] = pos.end
        headers = dict(wire.headers(host, pos, False), **{PIN_HEADER: pin})
        return Msg(old.nc, subject=wire.subject("shipper", host, 0), data=data, headers=headers,
                   reply=f"$JS.ACK.SHIPPER.SHIPPER_p0.1.{n}.{n}.{time.time_ns()}.0")

    pinned(old.tenure.claim, clock, "pinA")
    assert loop.run_until_complete(old._owning())
    loop.run_until_complete(old._handle(0, [msg(1, "pinA")], Backoff()))          # written and committed
    path = next((tmp_path / "out" / host).glob("app.log.*"))
    assert path.read_bytes() == b"line 1\n" and old.nc.sent[-1][1] == b""
    loop.run_until_complete(old._handle(0, [msg(2, "pinA")], Backoff(), more=True))   # written, not yet
    assert path.read_bytes() == b"line 1\nline 2\n"

    clock.now += G          # frozen: the lease ran out; another process owns the partition now
    new = Consumer(s, claim=Claim(T, clock), partition=0)
    new.nc = Client(pinned="pinB")
    old.nc.pinned = "pinB"
    pinned(new.tenure.claim, clock, "pinB")
    assert loop.run_until_complete(new._owning())
    assert path.read_bytes() == b"line 1\n"              # the new owner cut what was never recorded

    acks = len(old.nc.sent)
    loop.run_until_complete(old._commit_or_fail(0, Backoff()))   # the old one wakes up and commits
    assert [p for _, p in old.nc.sent[acks:]] == [b"-NAK"]       # nothing acknowledged: given back
    loop.run_until_complete(old._handle(0, [msg(3, "pinA")], Backoff()))
    assert path.read_bytes() == b"line 1\n"              # nothing written
    assert not old.tenure.loaded() and not loop.run_until_complete(old._owning())
    loop.close()


class Publisher:
    """A connection that only records what the puller publishes (its pull requests)."""

    def __init__(self) -> None:
        self.requests = []

    async def publish(self, subject, payload=b"", reply="", headers=None):
        self.requests.append(reply)


def test_a_frozen_owner_woken_up_gets_no_lease_from_what_it_was_sent_before_it_froze():
    """The server serves one client's requests in order, each up to its batch. A
    request sent on the local expiry of the one before can be counted as used up
    by that one's late messages; the messages it was sent before the freeze must
    still count from when it was sent, not from a request sent after waking up."""
    import asyncio

    from fshipper.puller import Puller

    clock = Clock()
    claim = Claim(T, clock)
    puller = Puller(Publisher(), "SHIPPER", "SHIPPER_p0", batch=3, max_bytes=1 << 20, wait=0.6, claim=claim)
    puller.inbox = "_INBOX.x"
    loop = asyncio.new_event_loop()

    def arrive(*msgs):
        puller.arrived.extend(msgs)
        return puller._drain()

    loop.run_until_complete(puller._request())                 # r1
    assert arrive(message("pinA"))
    clock.now += G - 0.4
    puller.expires_at = 0                                       # its wait is over here: the next one goes out
    loop.run_until_complete(puller._request())                 # r2, sent at 100 + G - 0.4
    arrive(message("pinA"), message("pinA"))                    # r1's last two
    arrive(message("pinA"))                                     # r2's first
    clock.now += 0.5
    assert claim.writable()
    clock.now += 30                                             # frozen, and the partition handed on meanwhile
    assert not claim.writable()
    loop.run_until_complete(puller._request())                 # woken up: r3, sent with the old pin
    arrive(message("pinA"), message("pinA"))                    # r2's last two, in the socket since before
    assert not claim.writable()
    loop.close()


def test_an_upgraded_consumer_carries_its_ledger_over_to_the_partitions_once(tmp_path, caplog):
    import logging

    from fshipper.ledger import Ledger
    from fshipper.ownership import ledger_directory, migrate, partition_ledger

    out, state = tmp_path / "out", tmp_path / "state"
    s = load(tmp_path, {"SHIPPER_PARTITIONS": "2", "SHIPPER_READ_PARTITIONS": "0,1",
                        "SHIPPER_DIRECTORY": str(out), "SHIPPER_STATE_DIR": str(state)})
    p0, p1 = host_on(0, 2), host_on(1, 2)
    old = Ledger(str(state), s.name)          # what a consumer without failover kept
    old.load()
    for host, end in ((p0, 700), (p1, 900)):
        old.advance(host, wire.Position("o1", 0, 0, end, first=(0, 0)))
    old.commit({f"{out}/{p0}/app.log.20261202": 700, f"{out}/{p1}/app.log.20261202": 900})
    old.close()
    os.makedirs(ledger_directory(s))
    with caplog.at_level(logging.INFO, logger="fshipper.ownership"):
        migrate(s)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "carried over" in lines[0] and "p0: 1 producer(s), 1 file(s)" in lines[0]
    for number, host, end in ((0, p0, 700), (1, p1, 900)):
        ledger = partition_ledger(s, number)
        ledger.read()
        assert ledger.last(host, "o1")[:2] == [0, end]
        assert ledger.files == {f"{out}/{host}/app.log.20261202": end}
        assert ledger.sources.keys() == {f"{host} o1"}
    assert not os.path.exists(old.path) and os.path.exists(old.path + ".migrated")
    assert oct(os.stat(partition_ledger(s, 0).path).st_mode & 0o777) == "0o600"

    caplog.clear()
    moved = partition_ledger(s, 0)
    moved.load()
    moved.advance(p0, wire.Position("o1", 0, 700, 800, first=(0, 0)))
    moved.commit({})
    moved.close()
    migrate(s)                                 # a later start: nothing left to carry over
    assert not caplog.records
    again = partition_ledger(s, 0)
    again.read()
    assert again.last(p0, "o1")[:2] == [0, 800]


def test_a_partition_with_a_ledger_of_its_own_is_not_overwritten(tmp_path):
    from fshipper.ledger import Ledger
    from fshipper.ownership import ledger_directory, migrate, partition_ledger

    out, state = tmp_path / "out", tmp_path / "state"
    s = load(tmp_path, {"SHIPPER_PARTITIONS": "2", "SHIPPER_READ_PARTITIONS": "0,1",
                        "SHIPPER_DIRECTORY": str(out), "SHIPPER_STATE_DIR": str(state)})
    p0, p1 = host_on(0, 2), host_on(1, 2)
    old = Ledger(str(state), s.name)
    old.load()
    old.advance(p0, wire.Position("o1", 0, 0, 100, first=(0, 0)))
    old.advance(p1, wire.Position("o2", 0, 0, 100, first=(0, 0)))
    old.commit({})
    old.close()
    os.makedirs(ledger_directory(s))
    mine = partition_ledger(s, 0)             # a partition a standby already owned
    mine.load()
    mine.advance(p0, wire.Position("o1", 0, 100, 500, first=(0, 0)))
    mine.commit({})
    mine.close()
    migrate(s)
    for number, host, origin, end in ((0, p0, "o1", 500), (1, p1, "o2", 100)):
        ledger = partition_ledger(s, number)
        ledger.read()
        assert ledger.last(host, origin)[1] == end


def test_a_lease_that_ran_out_is_not_renewed_by_messages_read_late():
    """A frozen owner reads, after it woke up, messages that waited in its socket.
    Whichever request they are taken to answer (the server's order cannot be seen
    from here), they renew nothing once the lease has run out; a request the
    server ended under the pin (408) would."""
    clock = Clock()
    claim = Claim(T, clock)
    pinned(claim, clock, "pinA")
    clock.now += 30                              # frozen; the partition was handed on meanwhile
    assert not claim.writable()
    claim.sent("r.3", 100)                       # on waking up, with the old pin
    claim.status("r.1", "408")                   # an old request's end: sent before the freeze
    claim.delivered(message("pinA"))             # taken for an answer to r.3
    assert not claim.writable()
    clock.now += 0.5
    claim.status("r.3", "408")                   # the server took r.3 under pinA after all
    assert claim.writable()


def test_a_lease_that_ran_out_comes_back_when_the_server_says_the_pin_is_still_ours():
    """A backlog fills every pull request, so none ends with 408; a commit that
    blocked the loop past the lease (fsyncs of a large batch) left the owner unable
    to write for good, giving every message back (a 1 GB backlog stopped at 397 MB).
    The server's answer about the pin, to a question asked after the lease ran out,
    brings it back; another client pinned means the partition is lost."""
    clock = Clock()
    claim = Claim(T, clock)
    pinned(claim, clock, "pinA")
    clock.now += T                               # a long commit: nothing read meanwhile
    assert not claim.writable()
    claim.delivered(message("pinA"))             # read late: proves nothing
    assert not claim.writable()
    asked = clock.now
    clock.now += 0.01
    claim.confirmed(asked, "pinA")
    assert claim.writable()
    clock.now += T / 2                           # no more than the guard after the question
    assert not claim.writable()
    epoch = claim.epoch
    claim.confirmed(clock.now, "pinB")
    assert claim.pin is None and claim.epoch != epoch and not claim.writable()
