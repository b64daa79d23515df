"""contrib/ansible's role against a booted Debian 12 (systemd-nspawn):
ansible-core, pip-installed in a venv inside the container, runs the role
on the container itself (connection local).  The first run installs the
.deb, writes the env files and starts a producer, a second producer
instance and a consumer; the second run changes nothing; a broken value is
refused by `validate:` and leaves the old file and the running daemons
alone.  Needs root and systemd-nspawn (skipped loudly otherwise, as
test_container.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from nspawn import CACHE, Container, wait_for
from pkgbuild import SKIPPED_BANNER, SOURCE, SUMMARY
from test_container import REASON, active, main_pid

if REASON:
    SKIPPED_BANNER.append(f"tests/system/test_ansible.py: the Ansible role test did NOT run: {REASON}")
    pytest.skip(f"Ansible role test not run: {REASON}", allow_module_level=True)

RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
LOG, APP_LOG, APP_HOST = "/var/log/ansible-test.log", "/var/log/app/app.log", "app.ansible.test"
UNITS = ("fshipper-producer.service", "fshipper-producer@app.service", "fshipper-consumer.service")


def ansible_wheels() -> str:
    """ansible-core and its dependencies as wheels for the container's Python
    (3.11), fetched once with this venv's pip and cached next to the root."""
    wheels = CACHE / "ansible-wheels"
    if not wheels.is_dir():
        partial = CACHE / "ansible-wheels.partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial), "--only-binary=:all:",
             "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
             "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "any",
             "-r", str(SOURCE / "contrib/ansible/requirements.txt")],
            check=True, timeout=600)
        partial.rename(wheels)
    return str(wheels)


class Run:
    recaps: list = []


@pytest.fixture(scope="module")
def box(tmp_path_factory, packages, nats_url):  # nats_url: the server outlives the container
    work = tmp_path_factory.mktemp("ansible")
    share = work / "share"
    share.mkdir()
    shutil.copy(packages.deb, share)
    shutil.copytree(SOURCE / "contrib/ansible", share / "ansible")
    shutil.copytree(ansible_wheels(), share / "wheels")
    started = time.monotonic()
    container = Container(work, share, f"fshipper-ansible-{os.getpid()}")
    with container:
        booted = time.monotonic()
        container.run(["apt-get", "update", "-q"], timeout=300)
        container.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "python3-venv", "python3-apt"],
                      timeout=600)
        container.run(["python3", "-m", "venv", "/opt/ansible"])
        container.run(["/opt/ansible/bin/pip", "install", "--quiet", "--no-index", "--find-links", "/mnt/pkg/wheels",
                       "-r", "/mnt/pkg/ansible/requirements.txt"], timeout=300)
        SUMMARY.append(f"ansible test: booted in {booted - started:.0f} s, ansible-core installed in "
                       f"{time.monotonic() - booted:.0f} s")
        container.sh(f"install -m 0640 -o root -g adm /dev/null {LOG}; install -d /var/log/app; "
                     f"install -m 0640 -o root -g adm /dev/null {APP_LOG}")
        try:
            yield container
        finally:
            journal = container.run(["journalctl", "--no-pager", "-o", "cat", "-p", "warning", "-u", "fshipper-*"],
                                    check=False)
            print(f"\n--- container journal (warnings) ---\n{journal.stdout[-10000:]}--- end ---")
    SUMMARY.append(f"ansible test: {time.monotonic() - started:.1f} s from unpacking the root to power-off")
    for recap in Run.recaps:
        SUMMARY.append(f"ansible {recap}")
    container.remove()


def playbook(box: Container, nats_url: str, packages, **override) -> tuple[subprocess.CompletedProcess, tuple]:
    variables = {
        "fshipper_deb": f"/mnt/pkg/{packages.deb.name}",
        "fshipper_roles": ["producer", "consumer"],
        "fshipper_settings": {"NATS_URL": nats_url, "SHIPPER_SUBJECT": f"ansible{os.getpid()}"},
        "fshipper_producer": {"SHIPPER_FILE": LOG},
        "fshipper_consumer": {"SHIPPER_OUTPUT": "shipped.%Y%m%d", "SHIPPER_DIRECTORY": "/var/log/fshipper"},
        "fshipper_producer_instances": {"app": {"SHIPPER_FILE": APP_LOG, "HOSTNAME": APP_HOST}},
        **override,
    }
    box.path("/root/vars.json").write_text(json.dumps(variables))
    began = time.monotonic()
    result = box.run(["/opt/ansible/bin/ansible-playbook", "-i", "localhost,", "-c", "local",
                      "-e", "@/root/vars.json", "/mnt/pkg/ansible/site.yml"], check=False, timeout=600)
    found = RECAP.search(result.stdout)
    assert found, f"no PLAY RECAP (exit {result.returncode})\n{result.stdout[-5000:]}\n{result.stderr[-3000:]}"
    Run.recaps.append(f"{found.group(0).strip()}  ({time.monotonic() - began:.0f} s)")
    return result, tuple(int(n) for n in found.groups())


def shipped(box: Container, host: str) -> list[str]:
    directory = box.path(f"/var/log/fshipper/{host}")
    return [line for part in sorted(directory.glob("shipped.*")) for line in part.read_text().splitlines()] \
        if directory.is_dir() else []


def test_first_run_installs_configures_and_starts(box, nats_url, packages):
    result, (ok, changed, unreachable, failed) = playbook(box, nats_url, packages)
    assert result.returncode == 0 and failed == 0 and unreachable == 0, result.stdout[-5000:]
    assert changed > 0
    assert box.run(["dpkg-query", "-W", "-f", "${Version}", "fshipper"]).stdout == packages.version
    for unit in UNITS:
        assert active(box, unit) == "active", box.run(["systemctl", "status", unit], check=False).stdout
        assert box.run(["systemctl", "is-enabled", unit]).stdout.strip() == "enabled"
    assert box.run(["stat", "-c", "%U:%G %a", "/etc/fshipper/producer-app.env"]).stdout.strip() == "root:fshipper 640"
    box.sh(f"echo 'from the app' >> {APP_LOG}; echo 'from the main log' >> {LOG}")
    wait_for(lambda: shipped(box, APP_HOST) == ["from the app"], 60, "the app instance's line")


def test_second_run_changes_nothing(box, nats_url, packages):
    pids = {unit: main_pid(box, unit) for unit in UNITS}
    result, (ok, changed, unreachable, failed) = playbook(box, nats_url, packages)
    assert result.returncode == 0 and failed == 0, result.stdout[-5000:]
    assert changed == 0, result.stdout[-5000:]
    assert {unit: main_pid(box, unit) for unit in UNITS} == pids


def reloads(box: Container, unit: str) -> int:
    return box.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout.count("reloading the configuration")


def test_a_changed_value_reloads_the_units(box, nats_url, packages):
    """The handler: a changed file, then a reload (SIGHUP, same process), not a restart."""
    pids = {unit: main_pid(box, unit) for unit in UNITS}
    before = {unit: reloads(box, unit) for unit in UNITS}
    result, (ok, changed, unreachable, failed) = playbook(
        box, nats_url, packages,
        fshipper_producer_instances={"app": {"SHIPPER_FILE": APP_LOG, "HOSTNAME": APP_HOST,
                                             "SHIPPER_LOG_LEVEL": "debug"}})
    assert result.returncode == 0 and failed == 0, result.stdout[-5000:]
    assert changed == 2, result.stdout[-5000:]  # the instance's file, the handler
    assert "SHIPPER_LOG_LEVEL=debug" in box.path("/etc/fshipper/producer-app.env").read_text()
    assert {unit: main_pid(box, unit) for unit in UNITS} == pids
    wait_for(lambda: all(reloads(box, unit) == before[unit] + 1 for unit in UNITS), 30, "the reloads")


def test_a_broken_value_is_refused_and_nothing_is_touched(box, nats_url, packages):
    before = box.path("/etc/fshipper/producer-app.env").read_bytes()
    pids = {unit: main_pid(box, unit) for unit in UNITS}
    reloaded = reloads(box, "fshipper-producer@app.service")
    result, (ok, changed, unreachable, failed) = playbook(
        box, nats_url, packages,
        fshipper_producer_instances={"app": {"SHIPPER_FILE": APP_LOG, "HOSTNAME": APP_HOST,
                                             "SHIPPER_PARTITIONS": "many"}})
    assert result.returncode != 0 and failed == 1, result.stdout[-5000:]
    assert "failed to validate" in result.stdout and "SHIPPER_PARTITIONS" in result.stdout, result.stdout[-5000:]
    assert box.path("/etc/fshipper/producer-app.env").read_bytes() == before
    assert {unit: main_pid(box, unit) for unit in UNITS} == pids
    for unit in UNITS:
        assert active(box, unit) == "active"
    assert reloads(box, "fshipper-producer@app.service") == reloaded, "reloaded after a refused file"
    box.sh(f"echo 'still shipping' >> {APP_LOG}")
    wait_for(lambda: shipped(box, APP_HOST) == ["from the app", "still shipping"], 60, "the app instance's line")
