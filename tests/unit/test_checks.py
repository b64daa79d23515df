"""The pure parts of the operations commands: access worked out from modes,
the metrics address, the instances of a config dir, status verdicts."""

import os
import stat

import pytest

from fshipper import checks, config, health
from fshipper.checks import R, W, X, User

ALICE = User("alice", 1000, (1000, 4))       # in her own group and adm (4)
ROOT = User("root", 0, (0,))


def st(mode: int, uid: int = 0, gid: int = 0, kind: int = stat.S_IFREG) -> os.stat_result:
    return os.stat_result((kind | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize("mode, uid, gid, want, expected", [
    (0o640, 0, 4, R, True),          # /var/log/syslog root:adm, alice in adm
    (0o640, 0, 0, R, False),         # root:root 0640: alice is neither
    (0o604, 0, 4, R, False),         # the group bits decide for a member, even if others may read
    (0o064, 1000, 0, R, False),      # the owner bits decide for the owner
    (0o644, 0, 0, R, True),          # others may read
    (0o755, 0, 0, W | X, False),     # a directory alice cannot write
    (0o770, 0, 4, W | X, True),      # ... and one she can, through adm
])
def test_access_is_decided_like_the_kernel(mode, uid, gid, want, expected):
    assert checks.allowed(st(mode, uid, gid), ALICE, want) is expected


def test_root_reads_and_writes_anything_and_searches_any_directory():
    assert checks.allowed(st(0o000), ROOT, R | W)
    assert checks.allowed(st(0o000, kind=stat.S_IFDIR), ROOT, X)
    assert not checks.allowed(st(0o644), ROOT, X)  # but executes only what some x bit allows


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9465", ("127.0.0.1", 9465)), ("[::1]:9465", ("::1", 9465)),
    ("metrics.example.net:80", ("metrics.example.net", 80)), ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_metrics_listen_takes_host_and_port(value, expected):
    assert config.BY_NAME["SHIPPER_METRICS_LISTEN"].convert(value) == expected


@pytest.mark.parametrize("value", ["9465", ":9465", "host:", "host:0", "host:65536", "host:\u0663", "a b:1"])
def test_metrics_listen_refuses_what_is_not_host_port(value):
    with pytest.raises(ValueError, match="expected host:port"):
        config.BY_NAME["SHIPPER_METRICS_LISTEN"].convert(value)


def test_instances_are_the_role_file_then_each_instance_file(tmp_path):
    for name in ("producer.env", "producer-b.env", "producer-a.env", "consumer-x.env", "producer-.env"):
        (tmp_path / name).write_text("")
    assert config.instances(str(tmp_path), "producer") == [None, "a", "b"]
    assert config.instances(str(tmp_path), "consumer") == ["x"]
    assert config.instances(str(tmp_path / "missing"), "producer") == []


def test_output_directory_is_the_fixed_part_of_the_pattern():
    def settings(output, directory=None):
        loaded = config.load("consumer", None, "/nonexistent", environ={
            "NATS_URL": "nats://h:4222", "SHIPPER_SUBJECT": "s", "SHIPPER_OUTPUT": output,
            **({"SHIPPER_DIRECTORY": directory} if directory else {})})
        return loaded.settings
    assert checks.output_directory(settings("all.%Y", "/srv/logs")) == "/srv/logs"
    assert checks.output_directory(settings("/srv/logs/all.%Y")) == "/srv/logs"
    assert checks.output_directory(settings("/srv/logs/%Y/%m/all.log")) == "/srv/logs"
    assert checks.output_directory(settings("/srv/logs/app-%Y/all.log")) == "/srv/logs"


def test_the_worst_verdict_decides_the_exit_status():
    lines = [health.Line("stream", "S", health.OK, ""), health.Line("producer", "p", health.WARNING, "")]
    assert health.EXIT[health.worst(lines)] == 1
    lines.append(health.Line("partition", "S_p0", health.CRITICAL, ""))
    assert health.EXIT[health.worst(lines)] == 2
    assert health.EXIT[health.worst([])] == 0
    assert health.render(lines)[0] == "CRITICAL: 1 critical, 1 warning, 1 ok"


def test_lag_counts_the_rest_of_a_rotated_file_and_all_of_the_new_one(tmp_path):
    old = tmp_path / "app.log.1"
    old.write_bytes(b"x" * 100)
    new = tmp_path / "app.log"
    new.write_bytes(b"y" * 30)
    o = os.stat(old)
    position = {"file": {"dev": o.st_dev, "ino": o.st_ino}, "offset": 60}
    assert health.lag_bytes(str(new), position) == 40 + 30
    n = os.stat(new)
    assert health.lag_bytes(str(new), {"file": {"dev": n.st_dev, "ino": n.st_ino}, "offset": 10}) == 20
    assert health.lag_bytes(str(new), {}) == 30   # nothing confirmed yet
    assert health.lag_bytes(str(tmp_path / "missing"), {}) is None
