"""The command lines as an operator or a config-management tool meets them."""

import os
import signal
import subprocess
import sys
import time

import pytest

from harness import BIN, clean_environ, wait_until, write_env


def run(*args, env=None, timeout=30):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True,
                          env=clean_environ(env), timeout=timeout)


@pytest.fixture
def confdir(tmp_path):
    write_env(tmp_path / "etc" / "fshipper.env", {
        "NATS_URL": "nats://127.0.0.1:4222", "SHIPPER_SUBJECT": "shipper",
        "SHIPPER_STATE_DIR": tmp_path / "state"})
    write_env(tmp_path / "etc" / "producer.env", {"SHIPPER_FILE": tmp_path / "app.log"})
    write_env(tmp_path / "etc" / "consumer.env", {
        "SHIPPER_OUTPUT": "out.%Y%m%d", "SHIPPER_DIRECTORY": tmp_path / "out"})
    return tmp_path / "etc"


def check(confdir, role, **env):
    return run("fshipper", "check-config", "--role", role, "--config-dir", str(confdir), env=env)


def test_check_config_prints_each_setting_with_its_source(confdir):
    result = check(confdir, "producer", SHIPPER_PARTITIONS="8")
    assert result.returncode == 0, result.stderr
    assert f"NATS_URL=nats://127.0.0.1:4222  # {confdir}/fshipper.env:1" in result.stdout
    assert "SHIPPER_PARTITIONS=8  # environment" in result.stdout
    assert "SHIPPER_MODE=jetstream  # default" in result.stdout
    assert "SHIPPER_OUTPUT" not in result.stdout  # a consumer setting


@pytest.mark.parametrize("role, file, key", [
    ("producer", "fshipper.env", "NATS_URL"),
    ("producer", "fshipper.env", "SHIPPER_SUBJECT"),
    ("producer", "producer.env", "SHIPPER_FILE"),
    ("consumer", "consumer.env", "SHIPPER_OUTPUT"),
])
def test_each_required_setting_missing_gives_78_naming_it(confdir, role, file, key):
    path = confdir / file
    path.write_text("".join(l + "\n" for l in path.read_text().splitlines() if not l.startswith(key + "=")))
    result = check(confdir, role)
    assert result.returncode == 78
    assert key in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("role, key, value, expected", [
    ("producer", "SHIPPER_PARTITIONS", "eight", "whole number"),
    ("producer", "SHIPPER_PARTITIONS", "-1", "whole number"),
    ("consumer", "SHIPPER_READ_PARTITIONS", "0,x", "partition numbers"),
    ("producer", "SHIPPER_FILE", "relative/app.log", "absolute path"),
    ("consumer", "SHIPPER_DIRECTORY", "out", "absolute path"),
    ("consumer", "SHIPPER_OUTPUT", "../escape.%Y", "without '..'"),
    ("producer", "NATS_URL", "http://example.net", "not a NATS URL"),
    ("producer", "NATS_URL", "nats://host:99999", "invalid port"),
    ("producer", "NATS_URL", ",", "one or more URLs"),
    ("producer", "SHIPPER_SUBJECT", "logs.*", "without wildcards"),
    ("producer", "SHIPPER_MODE", "fast", "one of jetstream, core"),
    ("producer", "NATS_CA", "/nonexistent/ca.pem", "no such file"),
    ("consumer", "SHIPPER_STREAM_MAX_AGE", "a week", "duration"),
    ("producer", "HOSTNAME", "bad host", "host name"),
    ("producer", "SHIPPER_PARTITIONS", "\u0663", "digits 0-9"),
    ("producer", "SHIPPER_MAX_INFLIGHT", "1_0", "digits 0-9"),
    ("consumer", "SHIPPER_KEEP_DAYS", "+5", "digits 0-9"),
    ("consumer", "SHIPPER_FETCH_BATCH", '" 5"', "digits 0-9"),
    ("producer", "SHIPPER_ROTATE_WAIT", "\u0663s", "duration"),
    ("producer", "SHIPPER_BATCH_BYTES", "\u0663K", "size"),
])
def test_malformed_values_give_78_with_file_line_key_and_reason(confdir, role, key, value, expected):
    file = confdir / f"{role}.env"
    file.write_text(file.read_text() + f"{key}={value}\n")
    line = len(file.read_text().splitlines())
    result = check(confdir, role)
    assert result.returncode == 78, result.stdout
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert f"{file}:{line}" in message and key in message and expected in message, message


def test_a_malformed_line_gives_78_naming_file_and_line(confdir):
    (confdir / "producer.env").write_text("SHIPPER_FILE=/var/log/app.log\nthis is not a setting\n")
    result = check(confdir, "producer")
    assert result.returncode == 78
    assert f"{confdir}/producer.env:2" in result.stderr and "KEY=VALUE" in result.stderr


def test_certificate_without_key_is_refused(confdir, tmp_path):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    result = check(confdir, "producer", NATS_CERTIFICATE=str(cert))
    assert result.returncode == 78 and "NATS_KEY" in result.stderr


def test_unknown_key_warns_with_the_nearest_name(confdir):
    (confdir / "consumer.env").write_text((confdir / "consumer.env").read_text() + "SHIPPER_DIRECTROY=/tmp\n")
    result = check(confdir, "consumer")
    assert result.returncode == 0
    assert "unknown setting SHIPPER_DIRECTROY (did you mean SHIPPER_DIRECTORY?)" in result.stderr


def test_quotes_export_and_comments_are_read_like_systemd(confdir):
    (confdir / "producer.env").write_text(
        '# comment\n\nexport SHIPPER_FILE="/var/log/my app.log"\nHOSTNAME=\'web1\'\n')
    result = check(confdir, "producer")
    assert result.returncode == 0, result.stderr
    assert "SHIPPER_FILE=/var/log/my app.log" in result.stdout and "HOSTNAME=web1  #" in result.stdout


def test_instance_file_overrides_role_file(confdir):
    # Its own HOSTNAME: two producers publishing as one host is an error (test_check_config.py).
    write_env(confdir / "producer-second.env", {"SHIPPER_FILE": "/var/log/second.log", "HOSTNAME": "second"})
    result = run("fshipper", "check-config", "--role", "producer", "--instance", "second",
                 "--config-dir", str(confdir))
    assert result.returncode == 0, result.stderr
    assert f"SHIPPER_FILE=/var/log/second.log  # {confdir}/producer-second.env:1" in result.stdout


def test_creds_without_pynacl_exits_69_naming_the_package(confdir, tmp_path):
    creds = tmp_path / "nats.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\n")
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "nacl").mkdir()
    (blocker / "nacl" / "__init__.py").write_text("raise ImportError('blocked for this test')\n")
    result = run("fshipper-producer", "--foreground", "--config-dir", str(confdir),
                 env={"NATS_CREDS": str(creds), "PYTHONPATH": str(blocker)})
    assert result.returncode == 69, result.stderr
    assert "python3-nacl" in result.stderr


def test_version_flags():
    for program in ("fshipper", "fshipper-producer", "fshipper-consumer"):
        result = run(program, "--version")
        assert result.returncode == 0 and result.stdout.strip().endswith("0.1.0"), result
    assert run("fshipper", "version").stdout.strip() == "fshipper 0.1.0"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_daemon_mode_returns_once_ready_and_stops_on_sigterm(confdir, tmp_path, nats_server):
    (tmp_path / "app.log").write_text("a line\n")
    pidfile = tmp_path / "run" / "producer.pid"
    started = time.monotonic()
    result = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile),
                 "--log-file", str(tmp_path / "producer.log"), env={"NATS_URL": nats_server.url})
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    pid = int(pidfile.read_text())
    assert _alive(pid)
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ppid, sid = int(fields[1]), int(fields[3])
    assert sid != os.getsid(0), "the daemon must be in a session of its own"
    assert ppid != os.getpid()
    assert pid != sid, "double fork: the daemon is not a session leader"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _alive(pid), 15, "the daemon to stop")
    assert not pidfile.exists()
    assert "stopped" in (tmp_path / "producer.log").read_text()


def test_daemon_mode_with_bad_config_returns_78_naming_the_setting(confdir, tmp_path):
    (confdir / "fshipper.env").write_text("SHIPPER_SUBJECT=shipper\n")
    pidfile = tmp_path / "producer.pid"
    result = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile))
    assert result.returncode == 78
    assert "NATS_URL" in result.stderr
    assert not pidfile.exists()


def test_daemon_failing_before_ready_reports_the_reason(confdir, tmp_path):
    pidfile = tmp_path / "not-a-dir"
    pidfile.write_text("")
    result = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile / "p.pid"))
    assert result.returncode != 0
    assert "pidfile" in result.stderr


def test_second_daemon_with_the_same_pidfile_is_refused(confdir, tmp_path, nats_server):
    (tmp_path / "app.log").write_text("")
    pidfile = tmp_path / "producer.pid"
    env = {"NATS_URL": nats_server.url}
    first = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile), env=env)
    assert first.returncode == 0, first.stderr
    pid = int(pidfile.read_text())
    try:
        second = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile), env=env)
        assert second.returncode != 0 and f"already running as pid {pid}" in second.stderr
        assert int(pidfile.read_text()) == pid
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 15, "the daemon to stop")


def test_setup_is_idempotent(confdir, nats_server):
    env = {"NATS_URL": nats_server.url, "SHIPPER_PARTITIONS": "3"}
    first = run("fshipper", "setup", "--config-dir", str(confdir), env=env)
    assert first.returncode == 0, first.stderr
    assert "stream SHIPPER: created" in first.stdout
    assert [l for l in first.stdout.splitlines() if l.startswith("consumer")] == [
        f"consumer SHIPPER_p{n}: created" for n in range(3)]
    second = run("fshipper", "setup", "--config-dir", str(confdir), env=env)
    assert second.returncode == 0 and "created" not in second.stdout and "updated" not in second.stdout, second.stdout
    # A looser limit is applied; a tighter one (messages would be dropped) only with --force.
    looser = run("fshipper", "setup", "--config-dir", str(confdir), env={**env, "SHIPPER_STREAM_MAX_AGE": "30d"})
    assert looser.returncode == 0 and "stream SHIPPER: updated (max_age 7d -> 30d)" in looser.stdout, looser
    tighter = run("fshipper", "setup", "--config-dir", str(confdir), env={**env, "SHIPPER_STREAM_MAX_AGE": "1d"})
    assert tighter.returncode == 78 and tighter.stdout == "", tighter
    assert tighter.stderr == ("fshipper: stream SHIPPER: left alone: max_age 30d -> 1d would drop or change what "
                              "it holds; `fshipper setup --force` applies it\n"), tighter.stderr
    forced = run("fshipper", "setup", "--force", "--config-dir", str(confdir),
                 env={**env, "SHIPPER_STREAM_MAX_AGE": "1d"})
    assert forced.returncode == 0 and "stream SHIPPER: updated (max_age 30d -> 1d)" in forced.stdout, forced
    status = run("fshipper", "status", "--config-dir", str(confdir), env=env)
    # exit 1: a warning, as producer.env names a producer that has never run here
    assert status.returncode == 1 and "ok partition SHIPPER_p2: 0 pending" in status.stdout, status.stdout


@pytest.mark.parametrize("role", ["producer", "consumer"])
def test_two_daemons_on_one_state_cannot_both_run(confdir, tmp_path, nats_server, role):
    """Another pidfile does not make another state: the second daemon is refused
    with one line naming the lock and the first one's pid, and the first runs on."""
    (tmp_path / "app.log").write_text("")
    env = {"NATS_URL": nats_server.url}
    first = run(f"fshipper-{role}", "--config-dir", str(confdir), "--pidfile", str(tmp_path / "a.pid"), env=env)
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "a.pid").read_text())
    try:
        second = run(f"fshipper-{role}", "--config-dir", str(confdir), "--pidfile", str(tmp_path / "b.pid"),
                     env=env)
        assert second.returncode == 1, second.stderr
        assert second.stderr.strip() == (f"fshipper-{role}: {tmp_path}/state/{role}.lock: this state is in use "
                                         f"by another fshipper daemon (pid {pid}); each daemon needs its own "
                                         "(--instance or SHIPPER_STATE_DIR)")
        assert not (tmp_path / "b.pid").exists() and _alive(pid)
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not _alive(pid), 15, "the daemon to stop")
    again = run(f"fshipper-{role}", "--config-dir", str(confdir), "--pidfile", str(tmp_path / "b.pid"), env=env)
    assert again.returncode == 0, again.stderr  # released when the first one stopped
    pid = int((tmp_path / "b.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _alive(pid), 15, "the daemon to stop")


# Host names the consumer refuses in a subject (a/b would leave SHIPPER_DIRECTORY, -rf
# reads as an option, .hidden and .. as special files, "wеb1" has a Cyrillic "е").
REFUSED_HOSTS = ["a/b", "-rf", ".hidden", "..", "w\u0435b1", "x" * 300]


@pytest.mark.parametrize("host", REFUSED_HOSTS, ids=lambda h: ascii(h[:12]))
def test_a_host_name_the_consumer_would_refuse_stops_the_producer_with_78(confdir, tmp_path, host):
    file = confdir / "producer.env"
    file.write_text(file.read_text() + f"HOSTNAME={host}\n", encoding="utf-8")
    line = len(file.read_text().splitlines())
    pidfile = tmp_path / "run" / "producer.pid"
    checked = check(confdir, "producer")
    started = run("fshipper-producer", "--config-dir", str(confdir), "--pidfile", str(pidfile))
    for result in (checked, started):
        assert result.returncode == 78, result
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert f"{file}:{line}: HOSTNAME={ascii(host)}: expected a host name of ASCII" in message, message
    assert not pidfile.exists()


def _as_host(name, *command):
    """`command` in a UTS namespace of its own whose host name is `name`."""
    setter = "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"
    unshare = ["unshare", "--uts"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])
    if subprocess.run(unshare + ["true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a UTS namespace here (unshare)")
    return subprocess.run(unshare + [sys.executable, "-c", setter, name, str(BIN / command[0]), *command[1:]],
                          capture_output=True, text=True, env=clean_environ(), timeout=30)


@pytest.mark.parametrize("host", ["-rf", "a/b", ".hidden", "w\u0435b1"], ids=ascii)
def test_an_os_host_name_the_consumer_would_refuse_is_not_used_by_default(confdir, tmp_path, host):
    checked = _as_host(host, "fshipper", "check-config", "--role", "producer", "--config-dir", str(confdir))
    started = _as_host(host, "fshipper-producer", "--config-dir", str(confdir),
                       "--pidfile", str(tmp_path / "producer.pid"))
    for result in (checked, started):
        assert result.returncode == 78, result
        message = result.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert (f"HOSTNAME is not set and the OS host name {ascii(host)} cannot be used: "
                "expected a host name of ASCII") in message, message
        assert f"set HOSTNAME in {confdir}/producer.env" in message, message
    good = _as_host("web1.example.net", "fshipper", "check-config", "--role", "producer",
                    "--config-dir", str(confdir))
    assert good.returncode == 0, good.stderr
    assert "HOSTNAME=web1.example.net  # the OS host name" in good.stdout


def test_check_config_quiet_prints_only_problems(confdir):
    """What the units' ExecStartPre runs: nothing in the journal at a valid start."""
    (confdir.parent / "app.log").write_text("")  # else: a warning that the producer waits for it
    quiet = run("fshipper", "check-config", "--quiet", "--role", "producer", "--config-dir", str(confdir))
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    with open(confdir / "producer.env", "a") as env:
        env.write("SHIPPER_BATCH_BYTE=1M\n")
    warned = run("fshipper", "check-config", "--quiet", "--role", "producer", "--config-dir", str(confdir))
    assert warned.returncode == 0 and warned.stdout == "" and "SHIPPER_BATCH_BYTES" in warned.stderr, warned
    with open(confdir / "producer.env", "a") as env:
        env.write("SHIPPER_PARTITIONS=many\n")
    broken = run("fshipper", "check-config", "--quiet", "--role", "producer", "--config-dir", str(confdir))
    assert broken.returncode == 78 and broken.stdout == "", broken
    assert len(broken.stderr.splitlines()) == 1 and "SHIPPER_PARTITIONS" in broken.stderr, broken.stderr
