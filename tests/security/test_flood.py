"""A flood of made-up origins and hosts: the consumer's state and memory stay small."""

import os

from fshipper import trust, wire
from harness import wait_until
from security.conftest import refused_count, stopped_line

WEB1 = "shipper.p0.web1.example.net"
MAX_HOSTS = 50
LEDGER_LIMIT = 64 << 10     # bytes of ledger and journal after the flood
RSS_LIMIT = 96 << 20        # the consumer's peak resident memory (about 32 MiB measured)


def state_bytes(p) -> int:
    """The ledgers and journals: in the state directory, or with failover (on with
    SHIPPER_DIRECTORY) one per partition next to the output."""
    paths = [p.state / name for name in ("consumer.ledger", "consumer.journal")]
    paths += [path for path in (p.out / ".fshipper").glob("*") if path.suffix in (".ledger", ".journal")]
    return sum(os.path.getsize(path) for path in paths if path.exists())


def test_a_flood_of_origins_and_hosts_is_refused_and_state_stays_small(hostile, capsys):
    h = hostile(SHIPPER_MAX_HOSTS=MAX_HOSTS)
    h.start(lines=20_000)
    p = h.p
    # Which hosts take the last free places depends on the order messages are
    # handled in: the flood comes once the consumer owns the partition, not within
    # its guard (where what overflows the guard's hold is handed back and comes again later).
    wait_until(lambda: "owner now" in p.consumer.tail(), 20, p.logs)
    before = state_bytes(p)
    huge = "o" * 60_000   # the 60 kB origins that grew the ledger to 60 MB
    flood = [(WEB1, b"x", {wire.HDR_POS: f"{huge}{n} 0 0 2 - - 0 0"}) for n in range(1_000)]
    # Made-up producers of one made-up host, each beginning its chain: 32 kept.
    flood += [("shipper.p0.busy", b"y", {wire.HDR_POS: f"origin{n} 0 0 2 - - 0 0"}) for n in range(1_000)]
    # 5,000 made-up hosts, half with a position, half plain.
    flood += [(f"shipper.p0.made-up-{n}", b"z", {wire.HDR_POS: f"o{n} 0 0 2 - - 0 0"} if n % 2 else None)
              for n in range(5_000)]
    assert h.publish(flood, acked=False) == len(flood)
    wait_until(h.drained, 60, p.logs)
    log = h.finish()

    hosts = sorted(h for h in os.listdir(p.out) if not h.startswith("."))
    assert len(hosts) == MAX_HOSTS and "web1.example.net" in hosts and "busy" in hosts
    refused = 1_000 + (1_000 - trust.MAX_ORIGINS_PER_HOST) + (5_000 - (MAX_HOSTS - 2))
    assert refused_count(log) == refused, stopped_line(log)
    line = stopped_line(log)
    assert "header 1000" in line and f"origin limit {1_000 - trust.MAX_ORIGINS_PER_HOST}" in line
    assert f"host limit {5_000 - (MAX_HOSTS - 2)}" in line
    assert log.count(f"ERROR SHIPPER_MAX_HOSTS={MAX_HOSTS} reached") == 1
    assert log.count("refused a message on") < 100   # rate-limited
    after = state_bytes(p)
    with capsys.disabled():
        print(f"\nflood: {len(flood)} messages; ledger+journal {before} -> {after} bytes; "
              f"consumer peak RSS (VmHWM) {h.consumer_peak_rss / 2 ** 20:.1f} MiB")
    assert after < LEDGER_LIMIT
    assert h.consumer_peak_rss < RSS_LIMIT