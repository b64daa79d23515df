"""check-config as config management runs it: a candidate file in place of one
layer, strict mode, and the checks of the running system for the service user."""

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import BIN, clean_environ, write_env

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="giving files to other users needs root")


def fshipper(*args, env=None):
    return subprocess.run([str(BIN / "fshipper"), *args], capture_output=True, text=True,
                          env=clean_environ(env), timeout=30)


@pytest.fixture
def world():
    """A config dir and the places it names, all usable by everyone: so that the
    checks can be asked for 'nobody' too (pytest's tmp_path is private to root)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="fshipper-check-"))
    tmp_path.chmod(0o755)
    yield from _world(tmp_path)
    shutil.rmtree(tmp_path, ignore_errors=True)


def _world(tmp_path):
    etc = tmp_path / "etc"
    write_env(etc / "fshipper.env", {"NATS_URL": "nats://127.0.0.1:4222", "SHIPPER_SUBJECT": "shipper",
                                     "SHIPPER_STATE_DIR": tmp_path / "state"})
    write_env(etc / "producer.env", {"SHIPPER_FILE": tmp_path / "logs" / "app.log", "HOSTNAME": "web1"})
    write_env(etc / "consumer.env", {"SHIPPER_OUTPUT": "out.%Y%m%d", "SHIPPER_DIRECTORY": tmp_path / "out"})
    for name in ("state", "logs", "out"):
        (tmp_path / name).mkdir(mode=0o777)
        (tmp_path / name).chmod(0o777)
    (tmp_path / "logs" / "app.log").write_text("a line\n")
    (tmp_path / "logs" / "app.log").chmod(0o644)
    yield tmp_path


def check(world, *args, role="producer", user="nobody" if ROOT else None, env=None):
    extra = ["--user", user] if user else []
    return fshipper("check-config", "--role", role, "--config-dir", str(world / "etc"), *extra, *args, env=env)


def problems(result):
    return result.stderr.strip().splitlines()


def test_a_candidate_replaces_its_layer_as_ansible_validate_uses_it(world):
    """The installed producer.env is broken; the candidate that will replace it is
    checked instead, so the broken file does not fail the check of its successor,
    and a broken candidate fails naming itself."""
    (world / "etc" / "producer.env").write_text("SHIPPER_FILE=relative\n")
    good = world / "candidate.good"
    good.write_text(f"SHIPPER_FILE={world}/logs/app.log\nHOSTNAME=web1\n")
    result = check(world, "--candidate", str(good), "--layer", "role", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    bad = world / "candidate.bad"
    bad.write_text("SHIPPER_FILE=/var/log/app.log\nSHIPPER_PARTITIONS=eight\n")
    result = check(world, "--candidate", str(bad), "--layer", "role")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: {bad}:2: SHIPPER_PARTITIONS='eight': expected a whole number "
                                "between 0 and 1000 (digits 0-9 only)"]
    shared = world / "candidate.shared"
    shared.write_text("SHIPPER_SUBJECT=logs\n")  # no NATS_URL: the shared layer would lose it
    result = check(world, "--candidate", str(shared), "--layer", "fshipper")
    assert result.returncode == 78 and "NATS_URL is not set" in result.stderr, result.stderr


def test_a_candidate_for_an_instance_needs_no_file_yet(world):
    candidate = world / "candidate"
    candidate.write_text(f"SHIPPER_FILE={world}/logs/app.log\nHOSTNAME=web2\n")
    result = check(world, "--instance", "second", "--candidate", str(candidate), "--layer", "instance")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# producer instance second: configuration is valid")
    assert f"HOSTNAME=web2  # {candidate}:2" in result.stdout


def test_strict_makes_unknown_and_repeated_keys_errors(world):
    file = world / "etc" / "producer.env"
    file.write_text(file.read_text() + "SHIPPER_FIEL=/x\n")
    lenient = check(world, "--quiet")
    assert lenient.returncode == 0
    assert problems(lenient) == [f"fshipper: warning: {file}:3: unknown setting SHIPPER_FIEL "
                                 "(did you mean SHIPPER_FILE?)"]
    strict = check(world, "--strict")
    assert strict.returncode == 78 and strict.stdout == ""
    assert problems(strict) == [f"fshipper: {file}:3: unknown setting SHIPPER_FIEL "
                                "(did you mean SHIPPER_FILE?) (--strict)"]
    file.write_text(f"HOSTNAME=web1\nSHIPPER_FILE={world}/logs/app.log\nHOSTNAME=web2\n")
    assert check(world, "--quiet").returncode == 0
    strict = check(world, "--strict")
    assert strict.returncode == 78
    assert problems(strict) == [f"fshipper: {file}:3: HOSTNAME is set again (first on line 1); "
                                "the last one counts (--strict)"]


def test_the_environment_is_ignored_with_a_candidate_or_no_environ(world):
    env = {"SHIPPER_PARTITIONS": "eight"}
    assert check(world, env=env).returncode == 78
    assert check(world, "--no-environ", "--quiet", env=env).returncode == 0
    candidate = world / "candidate"
    candidate.write_text((world / "etc" / "producer.env").read_text())
    assert check(world, "--candidate", str(candidate), "--layer", "role", "--quiet", env=env).returncode == 0
    assert check(world, "--candidate", str(candidate), "--layer", "role", "--environ", env=env).returncode == 78


def test_it_says_which_user_it_checked_for(world):
    result = check(world, user=None)
    assert result.returncode == 0, result.stderr
    try:
        expected = pwd.getpwnam("fshipper")
    except KeyError:
        expected = pwd.getpwuid(os.geteuid())
    assert f"system checked for user {expected.pw_name} (uid {expected.pw_uid}, groups " in result.stdout
    assert "no problems" in result.stdout.splitlines()[0]


def test_a_missing_file_in_an_existing_directory_is_a_warning(world):
    (world / "logs" / "app.log").unlink()
    result = check(world, "--quiet")
    assert result.returncode == 0
    assert problems(result) == [f"fshipper: warning: SHIPPER_FILE: {world}/logs/app.log: does not exist yet; "
                                "the producer waits for it"]


def test_a_missing_directory_is_an_error(world):
    (world / "logs" / "app.log").unlink()
    (world / "logs").rmdir()
    result = check(world, "--quiet")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: SHIPPER_FILE: {world}/logs/app.log: the directory "
                                f"{world}/logs does not exist"]


@needs_root
def test_a_file_the_service_user_cannot_read_is_an_error(world):
    log = world / "logs" / "app.log"
    log.chmod(0o640)  # root:root: nobody is neither
    result = check(world, "--quiet")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: SHIPPER_FILE: {log}: nobody cannot read it (mode 0640, "
                                "owner root, group root; nobody is in nogroup)"]
    os.chown(log, 0, pwd.getpwnam("nobody").pw_gid)  # readable through its group
    result = check(world, "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr


@needs_root
def test_a_directory_on_the_way_the_user_cannot_enter_is_an_error(world):
    (world / "logs").chmod(0o700)
    result = check(world, "--quiet")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: SHIPPER_FILE: {world}/logs/app.log: {world}/logs: nobody "
                                "cannot enter it (mode 0700, owner root, group root; nobody is in nogroup)"]


@needs_root
def test_an_output_directory_the_user_cannot_write_is_an_error(world):
    (world / "out").chmod(0o755)
    result = check(world, "--quiet", role="consumer")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: SHIPPER_DIRECTORY: {world}/out: nobody cannot write it "
                                "(mode 0755, owner root, group root; nobody is in nogroup)"]
    (world / "out").rmdir()  # the consumer creates it, if it can
    result = check(world, "--quiet", role="consumer")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: SHIPPER_DIRECTORY: {world}/out: does not exist, and nobody "
                                f"cannot create it: {world}: nobody cannot write it (mode 0755, owner root, "
                                "group root; nobody is in nogroup)"]
    (world / "state").chmod(0o755)
    assert len(problems(check(world, "--quiet", role="consumer"))) == 2


def test_an_output_directory_that_can_be_created_is_fine(world):
    (world / "out").rmdir()
    (world / "etc" / "consumer.env").write_text(f"SHIPPER_OUTPUT={world}/out/%Y/all.log\n")
    result = check(world, "--quiet", role="consumer", user=None)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_a_missing_instance_file_is_an_error(world):
    result = check(world, "--instance", "second", "--quiet")
    assert result.returncode == 78
    assert problems(result)[0] == (f"fshipper: error: --instance second: {world}/etc/producer-second.env "
                                   "does not exist")


def test_a_second_producer_publishing_as_the_same_host_is_an_error(world):
    instance = world / "etc" / "producer-second.env"
    write_env(instance, {"SHIPPER_FILE": world / "logs" / "app.log"})
    result = check(world, "--instance", "second", "--quiet")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: {instance}: publishes as host web1 on shipper.p0.web1, as "
                                f"{world}/etc/producer.env does; set its own HOSTNAME (or SHIPPER_SUBJECT) "
                                f"in {instance}"]
    assert check(world, "--quiet").returncode == 78  # the other one is told too
    write_env(instance, {"SHIPPER_FILE": world / "logs" / "app.log", "HOSTNAME": "web1-second"})
    assert check(world, "--instance", "second", "--quiet").returncode == 0
    write_env(instance, {"SHIPPER_FILE": world / "logs" / "app.log", "SHIPPER_SUBJECT": "other"})
    assert check(world, "--instance", "second", "--quiet").returncode == 0
    # A candidate for producer.env that names the instance's host: the instance
    # reads it too, and both would publish as web1-second.
    candidate = world / "candidate"
    candidate.write_text(f"SHIPPER_FILE={world}/logs/app.log\nHOSTNAME=web1-second\n")
    write_env(instance, {"SHIPPER_FILE": world / "logs" / "app.log"})
    result = check(world, "--candidate", str(candidate), "--layer", "role", "--quiet")
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: error: {world}/etc/producer.env: publishes as host web1-second on "
                                f"shipper.p0.web1-second, as {instance} does; set its own HOSTNAME (or "
                                f"SHIPPER_SUBJECT) in {world}/etc/producer.env"]


@pytest.mark.parametrize("args, message", [
    (["--candidate", "/nonexistent"], "--candidate needs --layer fshipper|role|instance"),
    (["--candidate", "/nonexistent", "--layer", "role"], "--candidate /nonexistent: no such file"),
    (["--layer", "instance", "--candidate", "/etc/hostname"], "--layer instance needs --instance NAME"),
    (["--user", "no-such-user-here"], "--user no-such-user-here: no such user"),
])
def test_usage_errors_are_one_line_and_78(world, args, message):
    result = check(world, *args, user=None)
    assert result.returncode == 78
    assert problems(result) == [f"fshipper: {message}"]
