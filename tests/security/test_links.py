"""Symbolic links in the output directory and a ledger naming other paths: nothing
outside the output directory is created, written, cut or deleted."""

import json
import os
import time

from security.conftest import refused_count, stopped_line


def today() -> str:
    return time.strftime("app.log.%Y%m%d")


def test_links_and_foreign_ledger_paths_are_never_followed(hostile):
    # The ledger in the state directory, where a consumer without failover reads
    # it (one with failover carries it over first: tests/unit/test_ownership.py).
    h = hostile(SHIPPER_FAILOVER_TIMEOUT="0")
    p, sentinel = h.p, h.sentinel.root
    # Planted before the consumer starts: a host directory that is a link to the
    # sentinel (expiry bait inside), an output file that is a link into it, a
    # dangling link where a new output file would be made, and a ledger whose
    # files name the sentinel's files (it used to cut them to 0 bytes at start).
    p.out.mkdir(parents=True)
    (p.out / "web2.example.net").symlink_to(sentinel)
    (p.out / "web3.example.net").mkdir()
    (p.out / "web3.example.net" / today()).symlink_to(sentinel / "precious.txt")
    (p.out / "web4.example.net").mkdir()
    (p.out / "web4.example.net" / today()).symlink_to(sentinel / "created-through-a-link")
    p.state.mkdir(parents=True)
    files = {str(sentinel / "precious.txt"): 0, f"{p.out}/../sentinel/sub/also.txt": 0,
             f"{p.out}/web2.example.net/app.log.20200101": 0}
    (p.state / "consumer.ledger").write_text(json.dumps({"version": 1, "sources": {}, "files": files}))
    before = h.sentinel.before
    h.start(lines=20_000)
    attacks = [(f"shipper.p0.{host}", b"through a link %d" % n, None)
               for n in range(5) for host in ("web2.example.net", "web3.example.net", "web4.example.net")]
    assert h.publish(attacks) == len(attacks)
    log = h.finish()
    assert h.sentinel.before == before
    assert refused_count(log) == len(attacks), stopped_line(log)
    assert f"unsafe path {len(attacks)}" in stopped_line(log)
    assert "refused a message on 'shipper.p0.web2.example.net'" in log
    for path in files:
        assert f"{path}: recorded in the ledger but not under the output directory; left alone" in log \
            or path.startswith(str(p.out) + "/web2")
    # The links are still there, as planted; expiry deleted nothing through them.
    assert os.path.islink(p.out / "web2.example.net") and os.path.islink(p.out / "web3.example.net" / today())
    assert h.sentinel.old.exists()
    # Modes: files 0640, directories 0750, state 0600.
    assert os.stat(p.output_files()[0]).st_mode & 0o777 == 0o640
    assert os.stat(p.out / p.host).st_mode & 0o777 == 0o750
    for name in ("consumer.ledger", "consumer.journal", "consumer.lock", "producer.position"):
        assert os.stat(p.state / name).st_mode & 0o777 == 0o600, name
