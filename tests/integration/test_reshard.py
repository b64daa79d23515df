"""Resharding a running fleet: SHIPPER_PARTITIONS 1 -> 4 while eight hosts
ship at a steady rate, following the README's procedure (Scaling out) with
real producers and consumers: the consumers learn both counts, consumers for
the new partitions start, then each producer in turn is stopped, its old
partition drained, switched and started again.  Every host's output must
hold each of its lines once and in order.
"""

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from fshipper import wire
from harness import BIN, Daemon, clean_environ, numbered_line, verdict, wait_until, write_env

BEFORE, AFTER = 1, 4
HOSTS = 8


def hosts() -> List[str]:
    """Eight host names, two on each of the four new partitions."""
    found: Dict[int, List[str]] = {n: [] for n in range(AFTER)}
    for k in range(1000):
        host = f"app{k}.example.net"
        if len(found[wire.partition(host, AFTER)]) < HOSTS // AFTER:
            found[wire.partition(host, AFTER)].append(host)
    names = [h for n in sorted(found) for h in found[n]]
    assert len(names) == HOSTS
    return names


class Writer(threading.Thread):
    """Appends numbered lines to every host's log at `rate` lines per second in total."""

    def __init__(self, logs: Dict[str, Path], rate: float) -> None:
        super().__init__(daemon=True, name="writer")
        self.logs, self.rate = logs, rate
        self.written = dict.fromkeys(logs, 0)
        self.halt = threading.Event()

    def run(self) -> None:
        started, sent, step = time.monotonic(), 0, 5
        while not self.halt.is_set():
            for host, path in self.logs.items():
                first = self.written[host] + 1
                with open(path, "ab") as f:
                    f.write(b"".join(numbered_line(n) for n in range(first, first + step)))
                self.written[host] += step
                sent += step
            ahead = started + sent / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class Fleet:
    """Producers (one config dir each) and consumers sharing one output directory."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.out = root / "out"
        self.hosts = hosts()
        self.logs = {h: root / "logs" / f"{h}.log" for h in self.hosts}
        for path in self.logs.values():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        self.producers = {h: Daemon("producer", root / "etc" / h, root / f"producer-{h}.log") for h in self.hosts}
        self.consumers: Dict[str, Daemon] = {}
        for host in self.hosts:
            self.configure_producer(host, BEFORE)

    def configure_producer(self, host: str, partitions: int) -> None:
        config = self.root / "etc" / host
        write_env(config / "fshipper.env", {"NATS_URL": self.url, "SHIPPER_SUBJECT": "shipper",
                                            "SHIPPER_PARTITIONS": partitions, "HOSTNAME": host,
                                            "SHIPPER_STATE_DIR": self.root / "state" / host})
        write_env(config / "producer.env", {"SHIPPER_FILE": self.logs[host]})

    def configure_consumer(self, name: str, read: str, partitions: int, before=None) -> Daemon:
        config = self.root / "etc" / f"consumer-{name}"
        common = {"NATS_URL": self.url, "SHIPPER_SUBJECT": "shipper", "SHIPPER_PARTITIONS": partitions,
                  "SHIPPER_STATE_DIR": self.root / "state" / f"consumer-{name}"}
        write_env(config / "fshipper.env", common)
        settings = {"SHIPPER_OUTPUT": "app.log.%Y%m%d", "SHIPPER_DIRECTORY": self.out,
                    "SHIPPER_READ_PARTITIONS": read}
        if before is not None:
            settings["SHIPPER_PARTITIONS_BEFORE"] = before
        write_env(config / "consumer.env", settings)
        if name not in self.consumers:
            self.consumers[name] = Daemon("consumer", config, self.root / f"consumer-{name}.log")
        return self.consumers[name]

    def setup(self, name: str) -> None:
        done = subprocess.run([str(BIN / "fshipper"), "setup", "--config-dir", str(self.root / "etc" / f"consumer-{name}")],
                              env=clean_environ(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

    def confirmed(self, host: str) -> int:
        """The byte offset the server confirmed to the host's (stopped) producer."""
        return json.loads((self.root / "state" / host / "producer.position").read_text())["offset"]

    def output(self, host: str) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((self.out / host).glob("app.log.*")))

    def logs_of(self, *names: str) -> str:
        daemons = {**{f"consumer {n}": d for n, d in self.consumers.items()},
                   **{f"producer {h}": d for h, d in self.producers.items() if h in names}}
        return "".join(f"--- {n}\n{d.tail(3000)}\n" for n, d in daemons.items())

    def stop(self) -> None:
        for daemon in [*self.producers.values(), *self.consumers.values()]:
            if daemon.running():
                daemon.stop(kill=True)


def reshard(tmp_path: Path, url: str, rate: float, settle: float) -> None:
    fleet = Fleet(tmp_path, url)
    writer = Writer(fleet.logs, rate)
    try:
        first = fleet.configure_consumer("a", "0", BEFORE)
        fleet.setup("a")
        first.start()
        wait_until(lambda: "consuming" in first.tail(), 30, fleet.logs_of)
        for daemon in fleet.producers.values():
            daemon.start()
        writer.start()
        time.sleep(settle)

        # 1. The consumers learn both counts; the new partitions get their consumers.
        fleet.configure_consumer("a", "0", AFTER, before=BEFORE)
        second = fleet.configure_consumer("b", "1,2,3", AFTER, before=BEFORE)
        fleet.setup("b")
        first.signal(signal.SIGHUP)
        second.start()
        wait_until(lambda: second.tail().count("consuming") >= 3, 30, fleet.logs_of)

        # 2. Host by host: stop, drain its old partition, switch, start.
        switched = time.monotonic()
        for host in fleet.hosts:
            fleet.producers[host].stop()
            wait_until(lambda: len(fleet.output(host)) >= fleet.confirmed(host), 60,
                       lambda: f"{host}'s old partition to deliver its lines\n{fleet.logs_of(host)}")
            fleet.configure_producer(host, AFTER)
            fleet.producers[host].start()
            time.sleep(settle / 4)
        print(f"\n{HOSTS} hosts switched in {time.monotonic() - switched:.1f} s")
        time.sleep(settle)

        # 3. Every host switched: the consumers drop the old count.
        fleet.configure_consumer("a", "0", AFTER)
        fleet.configure_consumer("b", "1,2,3", AFTER)
        first.signal(signal.SIGHUP)
        second.signal(signal.SIGHUP)
        time.sleep(settle)
    finally:
        writer.stop()
    try:
        for host in fleet.hosts:
            size = fleet.logs[host].stat().st_size
            wait_until(lambda: len(fleet.output(host)) >= size, 120,
                       lambda: f"every line of {host}\n{fleet.logs_of(host)}")
        results = {host: verdict(fleet.output(host), range(1, writer.written[host] + 1)) for host in fleet.hosts}
        for host, result in results.items():
            print(f"{host} (partition {wire.partition(host, BEFORE)} -> {wire.partition(host, AFTER)}): {result}")
        assert all(r["lost"] == r["duplicated"] == r["reordered"] == 0 and r["received"] == r["lines"]
                   for r in results.values()), results
        for host in fleet.hosts:
            assert fleet.output(host) == fleet.logs[host].read_bytes(), host
        logs = "".join(d.log.read_text(errors="replace") for d in fleet.consumers.values())
        assert "belongs to partition" not in logs, logs  # no host refused on either count
        assert "a gap in the output" not in logs, logs
        moved = {h for h in fleet.hosts if wire.partition(h, AFTER) != 0}
        # Each moved host's new partition went on from its record in the old one.
        assert {h for h in moved if f"host {h}: moved from partition 0" in logs} == moved, logs
    finally:
        fleet.stop()


def test_reshard_one_to_four_partitions_host_by_host(nats_server, tmp_path):
    reshard(tmp_path, nats_server.url, rate=400, settle=2)


@pytest.mark.chaos_long
def test_reshard_one_to_four_partitions_under_load(nats_server, tmp_path):
    reshard(tmp_path, nats_server.url, rate=2000, settle=8)
