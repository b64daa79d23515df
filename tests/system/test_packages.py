"""The built .deb and .rpm, inspected and unpacked on the host: lint, the
rpm's metadata and scriptlets, and the vendored tree under each Python the
package must serve (3.9 for RHEL 9, the host's, 3.13 for Debian 13)."""
from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import need_program
from pkgbuild import SOURCE

UNITS = ("fshipper-producer.service", "fshipper-consumer.service",
         "fshipper-producer@.service", "fshipper-consumer@.service")
PROGRAMS = ("fshipper", "fshipper-producer", "fshipper-consumer")
# nkeys imports PyNaCl, which the distribution provides (a Recommends).
VENDORED = ("nats", "nats.js", "daemon", "daemon.pidfile", "lockfile", "pyinotify", "prometheus_client")


def out(*cmd: str, **kwargs) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def deb_tree(packages, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deb-tree")
    out("dpkg-deb", "-x", str(packages.deb), str(root))
    return root


@pytest.fixture(scope="module")
def rpm_root(packages, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rpm-root")
    out("rpm", "--root", str(root), "--initdb")
    out("rpm", "-i", "--root", str(root), "--nodeps", "--noscripts", "--nosignature", str(packages.rpm))
    return root


def test_lintian_reports_nothing_unjustified(packages):
    result = subprocess.run(
        [need_program("lintian", "lintian"), "--pedantic", "--display-info", "--fail-on", "error,warning,info,pedantic",
         str(packages.deb)], capture_output=True, text=True)
    tags = [line for line in result.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert tags == [] and result.returncode == 0, result.stdout + result.stderr


def test_rpmlint_reports_nothing_unjustified(packages, tmp_path):
    # The signature is checked against an rpm database that knows the key.
    (tmp_path / ".rpmmacros").write_text(f"%_dbpath {tmp_path}/rpmdb\n")
    env = dict(os.environ, HOME=str(tmp_path))
    out("rpm", "--import", str(packages.rpm_public_key), env=env)
    report = out(need_program("rpmlint", "rpmlint"), "-c", str(SOURCE / "packaging/rpmlint.toml"), str(packages.rpm), env=env)
    assert re.search(r"\b0 errors, 0 warnings\b", report), report
    assert "signatures OK" in out("rpm", "-K", str(packages.rpm), env=env)


def test_one_version_everywhere(packages):
    setup_version = out(sys.executable, "setup.py", "--version", cwd=SOURCE).strip().splitlines()[-1]
    assert packages.version == setup_version
    assert out("dpkg-deb", "-f", str(packages.deb), "Version").strip() == setup_version
    assert out("rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", str(packages.rpm)) == f"{setup_version}-1"
    changelog = out("rpm", "-qp", "--changelog", str(packages.rpm))
    assert f"- {setup_version}-1\n" in changelog


def test_deb_control(packages):
    fields = {name: out("dpkg-deb", "-f", str(packages.deb), name).strip()
              for name in ("Depends", "Recommends", "Architecture")}
    assert "python3 (>= 3.9)" in fields["Depends"]
    assert fields["Recommends"] == "python3-nacl"
    assert fields["Architecture"] == "all"
    # No conffiles: dpkg never asks about /etc/fshipper on an upgrade (the
    # postinst copies the samples there on a first installation).
    control = subprocess.run(["dpkg-deb", "-I", str(packages.deb), "conffiles"], capture_output=True, text=True)
    assert control.returncode != 0 and "conffiles" in control.stderr, control
    files = out("dpkg-deb", "-c", str(packages.deb))
    assert "/etc/fshipper/\n" in files and "/etc/fshipper/fshipper.env" not in files
    for name in ("fshipper", "producer", "consumer"):
        assert f"./usr/share/fshipper/examples/{name}.env\n" in files
    assert "./usr/lib/tmpfiles.d/fshipper.conf\n" in files


def test_tmpfiles_makes_the_output_directory_readable_by_adm(deb_tree):
    """Host directories and files under /var/log/fshipper inherit group adm
    from its setgid bit (the consumer unit no longer sets LogsDirectory=,
    which would give it the service user's group at every start)."""
    entries = [line.split() for line in (deb_tree / "usr/lib/tmpfiles.d/fshipper.conf").read_text().splitlines()
               if line and not line.startswith("#")]
    assert entries == [["d", "/var/log/fshipper", "2750", "fshipper", "adm", "-"]]
    for unit in ("fshipper-consumer.service", "fshipper-consumer@.service"):
        text = (deb_tree / "lib/systemd/system" / unit).read_text()
        assert "LogsDirectory" not in text.replace("# logs are readable by group adm; LogsDirectory=", "")
        assert "\nReadWritePaths=-/var/log/fshipper\n" in text


def test_rpm_requires_and_config(packages):
    rpm = str(packages.rpm)
    requires = out("rpm", "-qp", "--requires", rpm).splitlines()
    assert "python3 >= 3.9" in requires
    # Requires(pre): useradd must be there when %pre runs.
    kinds = out("rpm", "-qp", "--qf", "[%{REQUIRENAME} %{REQUIREFLAGS:deptype}\n]", rpm).splitlines()
    assert "shadow-utils pre" in kinds, kinds
    assert out("rpm", "-qp", "--recommends", rpm).split() == ["python3-pynacl"]
    # %config(noreplace): rpm's fflags carry both bits (config = 1, noreplace = 16).
    flags = dict((line.split() + [""])[:2] for line in out(
        "rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm).splitlines())
    for name in ("fshipper", "producer", "consumer"):
        assert set(flags[f"/etc/fshipper/{name}.env"]) == {"c", "n"}, flags[f"/etc/fshipper/{name}.env"]
    assert [path for path, flag in flags.items() if "c" in flag] == [
        "/etc/fshipper/consumer.env", "/etc/fshipper/fshipper.env", "/etc/fshipper/producer.env"]
    files = set(out("rpm", "-qpl", rpm).split())
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in files
    for program in PROGRAMS:
        assert f"/usr/bin/{program}" in files
        assert f"/usr/share/man/man8/{program}.8.gz" in files
    assert {"/var/lib/fshipper", "/usr/lib/fshipper", "/usr/lib/fshipper/fshipper/__init__.py",
            "/usr/lib/fshipper/py312/asyncore/__init__.py", "/usr/lib/tmpfiles.d/fshipper.conf",
            "/usr/lib/sysusers.d/fshipper.conf", "/usr/share/fshipper/examples/producer.env"} <= files


def test_rpm_scriptlets(packages):
    scripts = out("rpm", "-qp", "--scripts", str(packages.rpm))
    sections = dict(re.findall(r"^(\w+) scriptlet.*?:\n(.*?)(?=^\w+ scriptlet|\Z)", scripts, re.M | re.S))
    assert "useradd --system" in sections["preinstall"]
    assert "systemd-tmpfiles --create" in sections["postinstall"]
    assert "compileall" in sections["postinstall"]
    assert "daemon-reload" in sections["postinstall"]
    # Stop only on erase, never on upgrade; restart what runs after an upgrade.
    assert re.search(r'if \[ "\$1" -eq 0 \]; then.*systemctl stop', sections["preuninstall"], re.S)
    assert re.search(r'if \[ "\$1" -ge 1 \]; then\s+systemctl try-restart', sections["postuninstall"])


def test_rpm_sysusers_matches_pre(rpm_root, packages):
    """The sysusers.d entry describes the user %pre makes with useradd."""
    entries = [line.split(None, 3) for line in (rpm_root / "usr/lib/sysusers.d/fshipper.conf").read_text().splitlines()
               if line and not line.startswith("#")]
    assert entries == [["u", "fshipper", "-", '"fshipper log shipper" /var/lib/fshipper /sbin/nologin']]
    pre = out("rpm", "-qp", "--scripts", str(packages.rpm))
    assert "--home-dir /var/lib/fshipper" in pre and "--shell /sbin/nologin" in pre


def test_rpm_unpacks_and_runs_with_host_python(rpm_root, packages):
    launcher = rpm_root / "usr/bin/fshipper"
    version = out("python3", str(launcher), "--version")
    assert packages.version in version
    assert (rpm_root / "etc/fshipper/producer.env").is_file()


def pyenv_python(series: str) -> str:
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    for root in filter(None, roots):
        found = sorted(glob.glob(f"{root}/versions/{series}.*/bin/python{series}"))
        if found:
            return found[-1]
    pytest.fail(f"no pyenv Python {series}: `pyenv install {series}` (it stands for "
                f"{'RHEL 9' if series == '3.9' else 'Debian 13'})", pytrace=False)


@pytest.mark.parametrize("series", ["3.9", "3.13", "host"])
def test_vendored_tree_under_python(series, deb_tree, packages):
    python = "python3" if series == "host" else pyenv_python(series)
    for program in PROGRAMS:
        assert packages.version in out(python, str(deb_tree / "usr/bin" / program), "--version")
    # Everything vendored imports with the launcher's path set-up; asyncore
    # is the standard library's below 3.12 and the vendored one from 3.12 on.
    check = f"""
import runpy, sys
launcher = runpy.run_path({str(deb_tree / 'usr/bin/fshipper')!r}, run_name="not_main")
import importlib, asyncore
for name in {VENDORED!r}:
    module = importlib.import_module(name)
    assert module.__file__.startswith(launcher["PRIVATE"]), (name, module.__file__)
vendored = asyncore.__file__.startswith(launcher["PRIVATE"])
assert vendored == (sys.version_info >= (3, 12)), asyncore.__file__
print("ok")
"""
    assert out(python, "-W", "ignore::DeprecationWarning", "-c", check).strip() == "ok"


def test_units_name_existing_programs_and_pages(deb_tree):
    unit_dir = deb_tree / "lib/systemd/system"
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(UNITS)
    for unit in UNITS:
        text = (unit_dir / unit).read_text()
        for binary in re.findall(r"^Exec\w+=(/usr/bin/\S+)", text, re.M):
            assert (deb_tree / binary.lstrip("/")).is_file(), (unit, binary)
        for page, section in re.findall(r"man:([\w-]+)\((\d)\)", text):
            assert (deb_tree / f"usr/share/man/man{section}/{page}.{section}.gz").is_file(), (unit, page)


def test_units_sandbox_exposure(deb_tree, tmp_path):
    """systemd's own rating of each unit's sandbox stays "OK" (below 2.0)."""
    unit_dir = deb_tree / "lib/systemd/system"
    for unit in UNITS:
        # Rating a template offline needs an instance name.
        path = tmp_path / unit.replace("@.", "@x.")
        path.write_text((unit_dir / unit).read_text())
        report = out("systemd-analyze", "security", "--offline=true", str(path))
        exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", report).group(1))
        assert exposure < 2.0, f"{unit}: exposure {exposure}\n{report}"


def test_creds_without_pynacl_exits_69_naming_the_package(deb_tree, tmp_path):
    """PyNaCl is only recommended: without it, a NATS_CREDS setting is refused
    at start with EX_UNAVAILABLE and the package to install."""
    python = pyenv_python("3.9")
    assert subprocess.run([python, "-c", "import nacl"], capture_output=True).returncode != 0, \
        "this interpreter has PyNaCl: the test would show nothing"
    creds = tmp_path / "nats.creds"
    creds.write_text("not used: the check comes first\n")
    (tmp_path / "fshipper.env").write_text(
        f"NATS_URL=nats://127.0.0.1:4222\nSHIPPER_SUBJECT=shipper\nNATS_CREDS={creds}\n")
    (tmp_path / "producer.env").write_text(f"SHIPPER_FILE={tmp_path / 'app.log'}\n")
    result = subprocess.run(
        [python, str(deb_tree / "usr/bin/fshipper-producer"), "--foreground", "--config-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 69, result
    assert "python3-nacl" in result.stderr and "python3-pynacl" in result.stderr, result.stderr
