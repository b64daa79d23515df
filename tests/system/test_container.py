"""The .deb in a booted Debian 12 (systemd-nspawn): install, configure,
ship, reload, a templated instance, a broken configuration, an upgrade and
a purge, in that order, against a nats-server on the host's loopback.

The steps share one container and build on each other, so they run in file
order; a failed step makes the later ones fail too (they say which).
Needs root and a working systemd-nspawn; skipped loudly otherwise.
"""
from __future__ import annotations

import os
import shutil
import time

import pytest

from pkgbuild import SKIPPED_BANNER, SUMMARY
from nspawn import Container, run_unbooted, unpack_root, wait_for

LOG = "/var/log/fshipper-test.log"
SECOND_LOG = "/var/log/fshipper-second.log"
SECOND_HOST = "second.fshipper.test"
MAIN_UNITS = ("fshipper-consumer.service", "fshipper-producer.service")


def why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "not root"
    for program, package in (("systemd-nspawn", "systemd-container"), ("nsenter", "util-linux"),
                             ("debootstrap", "debootstrap"), ("zstd", "zstd")):
        if not shutil.which(program):
            return (f"{program} is not installed: sudo apt-get install --no-install-recommends {package} "
                    "(make test installs packaging/ci-deps.txt itself when run as root)")
    return None


REASON = why_not_runnable()
if REASON:
    SKIPPED_BANNER.append(f"tests/system/test_container.py: the booted-Debian package test did NOT run: {REASON}")
    pytest.skip(f"booted-Debian package test not run: {REASON}", allow_module_level=True)


class Steps:
    """What the earlier steps left for the later ones."""
    failed: str | None = None
    shipped = 0           # numbered lines appended to LOG so far
    second_shipped = 0
    started = 0.0


@pytest.fixture(autouse=True)
def in_order():
    """conftest's report hook records the first failed step in Steps.failed."""
    if Steps.failed:
        pytest.fail(f"an earlier step failed ({Steps.failed})", pytrace=False)


@pytest.fixture(scope="module")
def box(tmp_path_factory, packages, newer_packages, nats_url):  # nats_url: the server outlives the container
    work = tmp_path_factory.mktemp("container")
    pkgdir = work / "pkg"
    pkgdir.mkdir()
    for build in (packages, newer_packages):
        shutil.copy(build.deb, pkgdir)
    Steps.started = time.monotonic()
    container = Container(work, pkgdir, f"fshipper-test-{os.getpid()}")
    with container:
        try:
            yield container
        finally:
            # The fshipper units' journal: warnings always, everything on failure.
            journal = container.run(
                ["journalctl", "--no-pager", "-o", "short-monotonic", "-u", "fshipper-*",
                 *([] if Steps.failed else ["-p", "warning"])], check=False)
            print(f"\n--- container journal ({'all' if Steps.failed else 'warnings'}) ---\n"
                  f"{journal.stdout[-20000:]}--- end of journal ---")
    SUMMARY.append(f"container test: {time.monotonic() - Steps.started:.1f} s from unpacking the root "
                   f"to power-off")
    container.remove()


def append_lines(box: Container, path: str, first: int, last: int, tag: str = "line") -> None:
    box.sh(f'for i in $(seq {first} {last}); do echo "{tag} $i of the package test"; done >> {path}')


def shipped_lines(box: Container, host: str) -> list[str]:
    directory = box.path(f"/var/log/fshipper/{host}")
    if not directory.is_dir():
        return []
    lines: list[str] = []
    for part in sorted(directory.iterdir()):
        lines.extend(part.read_text(errors="replace").splitlines())
    return lines


def expect_shipped(box: Container, host: str, count: int, tag: str = "line", timeout: float = 60) -> None:
    """Every numbered line 1..count arrived once, in order (and nothing else)."""
    expected = [f"{tag} {i} of the package test" for i in range(1, count + 1)]

    def arrived():
        got = shipped_lines(box, host)
        return got if len(got) >= count else None

    try:
        got = wait_for(arrived, timeout, f"{count} lines from {host}")
    except TimeoutError:
        got = shipped_lines(box, host)
        raise AssertionError(f"{len(got)} of {count} lines arrived from {host}; last: {got[-3:]}")
    assert got == expected, describe_difference(got, expected)


def describe_difference(got: list[str], expected: list[str]) -> str:
    missing = sorted(set(expected) - set(got))
    duplicated = sorted({line for line in got if got.count(line) > 1})
    return (f"{len(got)} lines for {len(expected)} expected; missing {missing[:5]}, "
            f"duplicated {duplicated[:5]}, order ok: {got == sorted(got, key=expected.index) if not missing else '?'}")


def main_pid(box: Container, unit: str) -> int:
    return int(box.run(["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout)


def active(box: Container, unit: str) -> str:
    return box.run(["systemctl", "is-active", unit], check=False).stdout.strip()


def hostname(box: Container) -> str:
    return box.run(["hostname"]).stdout.strip()


def show(box: Container, unit: str, *properties: str) -> dict:
    flags = [arg for name in properties for arg in ("-p", name)]
    return dict(line.split("=", 1) for line in box.run(["systemctl", "show", *flags, unit]).stdout.split())


def failed_state(box: Container, unit: str, *properties: str) -> dict | None:
    """The unit's ActiveState, NRestarts and `properties` once it is failed, else None."""
    state = show(box, unit, "ActiveState", "NRestarts", *properties)
    return state if state["ActiveState"] == "failed" else None


def exists(box: Container, path: str) -> bool:
    """Checked inside: /run is the container's own tmpfs."""
    return box.run(["test", "-e", path], check=False).returncode == 0


def write(box: Container, path: str, text: str, mode: int = 0o644) -> None:
    target = box.path(path)
    target.write_text(text)
    target.chmod(mode)


def test_install_and_purge_without_systemd_running(tmp_path_factory, packages):
    """As in an image build: the scripts leave systemd alone (a daemon-reload
    would fail here, and the install with it), and units the image enabled
    are disabled again on removal."""
    work = tmp_path_factory.mktemp("unbooted")
    (work / "pkg").mkdir()
    shutil.copy(packages.deb, work / "pkg")
    unpack_root(work / "root")
    result = run_unbooted(work / "root", work / "pkg", f"""
        test ! -d /run/systemd/system
        apt-get update -q
        # A service user made before the package (by hand or by config
        # management), not in adm: the install adds it.
        useradd --system --user-group --no-create-home fshipper
        apt-get install -y -q /mnt/pkg/{packages.deb.name}
        fshipper --version
        id -nG fshipper | tr ' ' '\n' | grep -qx adm
        for f in fshipper producer consumer; do
            cmp /usr/share/fshipper/examples/$f.env /etc/fshipper/$f.env
        done
        test "$(stat -c '%U:%G %a' /var/log/fshipper)" = "fshipper:adm 2750"
        systemctl enable fshipper-producer.service fshipper-consumer@x.service
        apt-get purge -y -q fshipper
        if ls /etc/systemd/system/*.wants/fshipper* 2>/dev/null; then exit 1; fi
        test ! -e /etc/fshipper && test ! -e /var/lib/fshipper && test ! -e /usr/lib/fshipper
        echo ALL-DONE
    """)
    shutil.rmtree(work / "root", ignore_errors=True)
    assert result.returncode == 0 and "ALL-DONE" in result.stdout, \
        f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    assert packages.version in result.stdout


def test_install_pulls_python3_and_enables_nothing(box, packages):
    box.run(["apt-get", "update", "-q"], timeout=300)
    assert box.run(["dpkg-query", "-W", "python3"], check=False).returncode != 0, \
        "the container root already has python3: the install would not show that it pulls it"
    box.run(["apt-get", "install", "-y", "-q", f"/mnt/pkg/{packages.deb.name}"], timeout=600)
    for package in ("python3", "python3-nacl"):  # a Depends, a Recommends
        assert box.run(["dpkg-query", "-W", "-f", "${Status}", package]).stdout == "install ok installed"
    assert packages.version in box.run(["fshipper", "--version"]).stdout
    groups = box.run(["id", "-nG", "fshipper"]).stdout.split()
    assert "adm" in groups and "fshipper" in groups
    assert box.run(["stat", "-c", "%U", "/var/lib/fshipper"]).stdout.strip() == "fshipper"
    # A first installation: the samples are the configuration to edit.
    for name in ("fshipper", "producer", "consumer"):
        assert box.path(f"/etc/fshipper/{name}.env").read_text() == \
            box.path(f"/usr/share/fshipper/examples/{name}.env").read_text()
    assert box.run(["stat", "-c", "%U:%G %a", "/var/log/fshipper"]).stdout.strip() == "fshipper:adm 2750"
    for unit in MAIN_UNITS:
        assert box.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "disabled"
        assert active(box, unit) == "inactive"
    assert box.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend", "fshipper-*"]).stdout == ""


def test_units_verify_cleanly(box):
    # --man=no: the container has no man-db; the package tests check that
    # every Documentation= page is in the package.
    for unit in MAIN_UNITS + ("fshipper-producer@x.service", "fshipper-consumer@x.service"):
        result = box.run(["systemd-analyze", "verify", "--man=no", unit], check=False)
        assert result.returncode == 0 and result.stderr == "" and result.stdout == "", (unit, result)


def test_enable_now_ships_numbered_lines(box, nats_url):
    subject = f"pkgtest{os.getpid()}"
    write(box, "/etc/fshipper/fshipper.env",
          f"# edited by the package test\nNATS_URL={nats_url}\nSHIPPER_SUBJECT={subject}\n")
    write(box, "/etc/fshipper/producer.env", f"SHIPPER_FILE={LOG}\n")
    write(box, "/etc/fshipper/consumer.env",
          "SHIPPER_OUTPUT=shipped.%Y%m%d\nSHIPPER_DIRECTORY=/var/log/fshipper\n")
    box.sh(f"install -m 0640 -o root -g adm /dev/null {LOG}")
    box.run(["fshipper", "check-config", "--role", "producer"])
    box.run(["systemctl", "enable", "--now", *MAIN_UNITS], timeout=120)
    for unit in MAIN_UNITS:
        assert active(box, unit) == "active", box.run(["systemctl", "status", unit], check=False).stdout
        user = box.run(["stat", "-c", "%U", f"/proc/{main_pid(box, unit)}"]).stdout.strip()
        assert user == "fshipper", (unit, user)
    append_lines(box, LOG, 1, 500)
    Steps.shipped = 500
    expect_shipped(box, hostname(box), Steps.shipped)
    # Readable by the administrators' group, as /var/log is.
    host_dir = f"/var/log/fshipper/{hostname(box)}"
    assert box.run(["stat", "-c", "%G %a", host_dir]).stdout.strip() == "adm 2750"
    modes = box.sh(f"stat -c '%G %a' {host_dir}/*").stdout.split("\n")
    assert set(filter(None, modes)) == {"adm 640"}, modes
    # ExecStartPre's check-config is quiet: no settings in the journal.
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", "fshipper-producer.service"]).stdout
    assert "NATS_URL" not in journal and "configuration is valid" not in journal, journal


def test_reload_keeps_shipping_without_loss(box):
    pids = {unit: main_pid(box, unit) for unit in MAIN_UNITS}
    append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 300)
    box.run(["systemctl", "reload", *MAIN_UNITS])
    append_lines(box, LOG, Steps.shipped + 301, Steps.shipped + 600)
    box.run(["systemctl", "reload", "fshipper-producer.service"])
    append_lines(box, LOG, Steps.shipped + 601, Steps.shipped + 900)
    Steps.shipped += 900
    expect_shipped(box, hostname(box), Steps.shipped)
    for unit, pid in pids.items():
        assert active(box, unit) == "active"
        assert main_pid(box, unit) == pid, f"{unit} was restarted, not reloaded"
    # The daemons got the SIGHUP (they log to syslog, which the journal files
    # under their unit).
    for unit, reloads in (("fshipper-producer.service", 2), ("fshipper-consumer.service", 1)):
        journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
        assert journal.count("reloading the configuration") == reloads, journal[-3000:]


def test_templated_producer_ships_a_second_file(box):
    write(box, "/etc/fshipper/producer-second.env", f"SHIPPER_FILE={SECOND_LOG}\nHOSTNAME={SECOND_HOST}\n")
    box.sh(f"install -m 0640 -o root -g adm /dev/null {SECOND_LOG}")
    box.run(["systemctl", "start", "fshipper-producer@second.service"])
    assert active(box, "fshipper-producer@second.service") == "active"
    assert exists(box, "/run/fshipper/producer-second.pid")
    append_lines(box, SECOND_LOG, 1, 200, tag="second")
    append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 100)
    Steps.second_shipped, Steps.shipped = 200, Steps.shipped + 100
    expect_shipped(box, SECOND_HOST, Steps.second_shipped, tag="second")
    expect_shipped(box, hostname(box), Steps.shipped)
    # Stopping one instance leaves the others' pidfiles in the shared /run/fshipper.
    box.run(["systemctl", "stop", "fshipper-producer@second.service"])
    assert exists(box, "/run/fshipper/producer.pid")
    assert exists(box, "/run/fshipper/consumer.pid")
    assert active(box, "fshipper-producer.service") == "active"


def test_broken_env_file_fails_the_start_once_with_the_reason_in_the_journal(box):
    write(box, "/etc/fshipper/producer-broken.env", f"SHIPPER_FILE={LOG}\nSHIPPER_PARTITIONS=many\n")
    unit = "fshipper-producer@broken.service"
    result = box.run(["systemctl", "start", unit], check=False, timeout=60)
    assert result.returncode != 0
    assert active(box, unit) != "active"
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
    problems = [line for line in journal.splitlines() if "SHIPPER_PARTITIONS" in line]
    assert len(problems) == 1 and "many" in problems[0], journal
    # Failed once and left so: no restart (Restart=on-abnormal), no start limit.
    state = wait_for(lambda: failed_state(box, unit, "Result"), 60, f"{unit} to fail", interval=0.5)
    time.sleep(6)  # longer than RestartSec=5s: a restart would show now
    state = failed_state(box, unit, "Result") or state
    print(f"broken configuration: {state}")
    assert state == {"ActiveState": "failed", "NRestarts": "0", "Result": "exit-code"}, state
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
    assert journal.count(f"Starting {unit}") == 1, journal
    box.run(["systemctl", "reset-failed", unit])
    box.path("/etc/fshipper/producer-broken.env").unlink()


def test_output_outside_var_log_fails_once_naming_the_drop_in(box):
    """ProtectSystem=strict leaves /srv read-only: the consumer refuses to start
    with one line naming the drop-in (exit 78, not restarted); with the
    drop-in it runs.  Its own subject keeps it off the main consumer's stream."""
    unit = "fshipper-consumer@elsewhere.service"
    write(box, "/etc/fshipper/consumer-elsewhere.env",
          "SHIPPER_SUBJECT=elsewhere\nSHIPPER_DIRECTORY=/srv/shipped\n")
    # The directory is the service user's (so ExecStartPre's check-config passes);
    # only the sandbox keeps the daemon from writing there.
    box.sh("install -d -o fshipper -g adm -m 2750 /srv/shipped")
    result = box.run(["systemctl", "start", unit], check=False, timeout=60)
    assert result.returncode != 0
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
    wanted = ("/srv/shipped: read-only file system (the unit's ProtectSystem=strict allows writing to "
              "/var/log/fshipper only): run `systemctl edit fshipper-consumer@elsewhere`, add the lines "
              "`[Service]` and `ReadWritePaths=/srv/shipped`, then restart it")
    assert wanted in journal, journal
    assert "Traceback" not in journal, journal
    state = box.run(["systemctl", "show", "-p", "Result", "-p", "ExecMainStatus", unit]).stdout
    print(f"consumer with a read-only output: {' '.join(state.split())}")
    drop_in = box.path(f"/etc/systemd/system/{unit}.d/output.conf")
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text("[Service]\nReadWritePaths=/srv/shipped\n")
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "reset-failed", unit], check=False)
    box.run(["systemctl", "start", unit], timeout=60)
    assert active(box, unit) == "active"
    box.run(["systemctl", "stop", unit])
    box.path("/etc/fshipper/consumer-elsewhere.env").unlink()


def test_consumer_meeting_a_foreign_stream_fails_once(box, nats_url):
    """An operator's stream of the name the consumer would use: the daemon,
    already started, says why and exits 78; RestartPreventExitStatus=78 keeps
    systemd from restarting it."""
    import asyncio

    import nats
    from nats.js import api

    async def foreign_stream():
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().add_stream(api.StreamConfig(name="OPERATORS", subjects=["operators.>"]))
        finally:
            await nc.close()

    asyncio.run(foreign_stream())
    unit = "fshipper-consumer@foreign.service"
    write(box, "/etc/fshipper/consumer-foreign.env", "SHIPPER_SUBJECT=operators\nSHIPPER_STREAM=OPERATORS\n")
    box.run(["systemctl", "start", unit], check=False, timeout=60)
    state = wait_for(lambda: failed_state(box, unit, "ExecMainStatus"), 60, f"{unit} to fail", interval=0.5)
    time.sleep(6)  # longer than RestartSec=5s: a restart would show now
    state = failed_state(box, unit, "ExecMainStatus") or state
    print(f"consumer meeting a foreign stream: {state}")
    assert state["ExecMainStatus"] == "78" and state["NRestarts"] == "0", state
    journal = box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout
    assert "stream OPERATORS: exists and was not created by fshipper" in journal, journal
    assert "Traceback" not in journal, journal
    box.run(["systemctl", "reset-failed", unit])
    box.path("/etc/fshipper/consumer-foreign.env").unlink()


def test_killed_daemons_are_restarted_without_loss(box):
    """kill -9 of a running daemon: systemd starts it again after RestartSec
    (Restart=on-abnormal covers signals) and no line is lost or doubled."""
    for unit in MAIN_UNITS:
        pid = main_pid(box, unit)
        before = int(show(box, unit, "NRestarts")["NRestarts"])
        append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 100)
        Steps.shipped += 100
        box.sh(f"kill -9 {pid}")  # the shell's kill: a minimal Debian has no procps
        wait_for(lambda: active(box, unit) == "active" and main_pid(box, unit) not in (0, pid), 60,
                 f"{unit} to be restarted", interval=0.5)
        state = show(box, unit, "NRestarts", "ExecMainCode", "ExecMainStatus")
        print(f"{unit} after kill -9: {state}")
        assert int(state["NRestarts"]) == before + 1, state
    append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 100)
    Steps.shipped += 100
    expect_shipped(box, hostname(box), Steps.shipped)


def test_daemon_dying_of_an_error_is_restarted(box):
    """A running daemon that exits 1 (as after an unexpected error) is
    restarted (RestartForceExitStatus=1); one that keeps dying is left
    failed by the start limit; with the fault gone, nothing was lost."""
    unit = "fshipper-consumer.service"
    drop_in = box.path(f"/etc/systemd/system/{unit}.d/failpoint.conf")
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text("[Service]\nEnvironment=FSHIPPER_FAILPOINT=consumer-batch:1:exit\n")
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "restart", unit], timeout=60)
    before = int(show(box, unit, "NRestarts")["NRestarts"])
    append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 100)
    Steps.shipped += 100

    def restarted_after_exit_1():
        state = show(box, unit, "NRestarts", "ExecMainCode", "ExecMainStatus", "ActiveState")
        return state if int(state["NRestarts"]) > before and state["ExecMainStatus"] == "1" else None

    state = wait_for(restarted_after_exit_1, 60, f"{unit} to be restarted after exit 1", interval=0.5)
    print(f"{unit} after exit 1: {state}")
    state = wait_for(lambda: failed_state(box, unit, "Result"), 60, f"{unit} to hit its start limit", interval=1)
    print(f"{unit} dying at every start: {state}")
    assert int(state["NRestarts"]) <= 3, state  # StartLimitBurst=3 within StartLimitIntervalSec=60s
    drop_in.unlink()
    box.run(["systemctl", "daemon-reload"])
    box.run(["systemctl", "reset-failed", unit])
    box.run(["systemctl", "start", unit], timeout=60)
    expect_shipped(box, hostname(box), Steps.shipped)


def test_unattended_upgrade_keeps_edits_and_restarts_running_units(box, newer_packages):
    """`apt-get install -y` of a newer version, as an unattended run does it:
    stdin closed, no terminal, no DEBIAN_FRONTEND and no dpkg --force-conf*
    options.  Every sample changed in the newer build and every env file was
    edited here: nothing is asked, nothing is replaced, the running units
    are restarted and the stopped instance stays stopped."""
    with open(box.path("/etc/fshipper/producer.env"), "a") as env:
        env.write("# the administrator's own line\n")
    edited = {name: box.path(f"/etc/fshipper/{name}.env").read_text()
              for name in ("fshipper", "producer", "consumer", "producer-second")}
    pids = {unit: main_pid(box, unit) for unit in MAIN_UNITS}
    upgrade = box.run(["env", "-u", "DEBIAN_FRONTEND", "sh", "-c",
                       f"exec 0<&-; apt-get install -y -q /mnt/pkg/{newer_packages.deb.name}"],
                      check=False, timeout=300)
    assert upgrade.returncode == 0, f"exit {upgrade.returncode}\n{upgrade.stdout[-3000:]}\n{upgrade.stderr[-3000:]}"
    assert "conffile" not in upgrade.stdout + upgrade.stderr
    assert box.run(["dpkg-query", "-W", "-f", "${Version}", "fshipper"]).stdout == newer_packages.version
    for name, text in edited.items():
        assert box.path(f"/etc/fshipper/{name}.env").read_text() == text, name
    assert sorted(p.name for p in box.path("/etc/fshipper").iterdir()) == sorted(f"{n}.env" for n in edited)
    # The newer samples are there to compare with.
    assert "changed in the newer build" in box.path("/usr/share/fshipper/examples/producer.env").read_text()
    for unit, pid in pids.items():
        assert active(box, unit) == "active"
        assert main_pid(box, unit) not in (0, pid), f"{unit} was not restarted by the upgrade"
    # A stopped instance stays stopped.
    assert active(box, "fshipper-producer@second.service") == "inactive"
    assert newer_packages.version in box.run(["fshipper", "--version"]).stdout
    append_lines(box, LOG, Steps.shipped + 1, Steps.shipped + 200)
    Steps.shipped += 200
    expect_shipped(box, hostname(box), Steps.shipped)


def test_purge_leaves_nothing_behind(box):
    files = box.run(["dpkg-query", "-L", "fshipper"]).stdout.split("\n")
    own = [path for path in files if path and (
        "fshipper" in path or not box.path(path).is_dir())]
    box.run(["apt-get", "purge", "-y", "-q", "fshipper"], timeout=300)
    left = [path for path in own if os.path.lexists(box.path(path))]
    assert left == []
    for directory in ("/etc/fshipper", "/var/lib/fshipper", "/usr/lib/fshipper", "/run/fshipper"):
        assert not exists(box, directory), directory
    # list-unit-files exits 1 when nothing matches.
    listed = box.run(["systemctl", "list-unit-files", "--no-legend", "fshipper*"], check=False)
    assert listed.stdout.strip() == "" and listed.returncode == 1, listed
    owners = box.sh("for p in /proc/[0-9]*; do stat -c %U $p 2>/dev/null || true; done").stdout.split()
    assert "fshipper" not in owners
    wants = list(box.path("/etc/systemd/system").glob("*.wants/fshipper*"))
    assert wants == []
