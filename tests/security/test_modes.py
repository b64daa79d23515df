"""Modes of what the daemons create: the unit's UMask holds, host directories 0750, files 0640."""

import os
import signal
import stat
import subprocess

from harness import BIN, append_numbered, clean_environ, wait_until, write_env


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _umask_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Umask:")), 8)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_detached_daemon_keeps_the_umask_it_was_started_with(tmp_path, nats_server):
    config = tmp_path / "etc"
    write_env(config / "fshipper.env", {"NATS_URL": nats_server.url, "SHIPPER_SUBJECT": "shipper",
                                        "SHIPPER_STATE_DIR": tmp_path / "state"})
    write_env(config / "producer.env", {"SHIPPER_FILE": tmp_path / "app.log", "HOSTNAME": "web1"})
    (tmp_path / "app.log").write_text("a line\n")
    pidfile, log = tmp_path / "run" / "producer.pid", tmp_path / "producer.log"
    # As systemd starts it with UMask=0027: the shell sets the mask, then becomes the producer.
    started = subprocess.run(
        ["sh", "-c", 'umask 0027 && exec "$0" "$@"', str(BIN / "fshipper-producer"),
         "--config-dir", str(config), "--pidfile", str(pidfile), "--log-file", str(log)],
        capture_output=True, text=True, env=clean_environ(), timeout=60)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    try:
        assert _umask_of(pid) == 0o027
        assert mode(pidfile) == 0o640 and mode(log) == 0o640   # not 0644
        assert mode(pidfile.parent) == 0o750
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 15, "the daemon to stop")


def test_host_directories_are_0750_and_output_files_0640_under_a_loose_umask(pipeline):
    p = pipeline()
    append_numbered(p.log, 1, 3)
    previous = os.umask(0)  # the consumer inherits it: only its own modes protect the output
    try:
        p.consumer.start()
    finally:
        os.umask(previous)
    p.producer.start()
    wait_until(lambda: p.output_files() and p.output().count(b"\n") == 3, 30, p.logs)
    assert mode(p.out / p.host) == 0o750
    assert [mode(f) for f in p.output_files()] == [0o640]
