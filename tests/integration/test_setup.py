"""`fshipper setup` and the consumer change only what fshipper created: an
operator's stream or consumer, or a change that would drop messages, is one
line and exit 78 with nothing changed; --dry-run shows, --force takes over."""

import asyncio
import subprocess

import nats
import pytest
from nats.js import api

from harness import BIN, clean_environ, write_env


@pytest.fixture
def confdir(tmp_path, nats_server):
    write_env(tmp_path / "etc" / "fshipper.env", {
        "NATS_URL": nats_server.url, "SHIPPER_SUBJECT": "shipper", "SHIPPER_STATE_DIR": tmp_path / "state"})
    write_env(tmp_path / "etc" / "consumer.env", {
        "SHIPPER_OUTPUT": "out.%Y%m%d", "SHIPPER_DIRECTORY": tmp_path / "out"})
    return tmp_path / "etc"


def setup(confdir, *flags):
    return subprocess.run([str(BIN / "fshipper"), "setup", *flags, "--config-dir", str(confdir)],
                          capture_output=True, text=True, env=clean_environ(), timeout=60)


def jetstream(url, work):
    """Run `work(js)` on a fresh connection; returns its result."""
    async def run():
        nc = await nats.connect(url)
        try:
            return await work(nc.jetstream())
        finally:
            await nc.close()
    return asyncio.run(run())


def stream_config(url, name):
    async def work(js):
        return (await js.stream_info(name)).config.as_dict()
    return jetstream(url, work)


def stream_names(url):
    async def work(js):
        return sorted(s.config.name for s in await js.streams_info())
    return jetstream(url, work)


def add_stream(url, **config):
    async def work(js):
        await js.add_stream(api.StreamConfig(**config))
    jetstream(url, work)


def one_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_operators_stream_of_the_same_name_survives_setup(confdir, nats_server):
    add_stream(nats_server.url, name="SHIPPER", subjects=["shipper.>"], max_age=3600.0, max_msgs=1000)
    before = stream_config(nats_server.url, "SHIPPER")
    result = setup(confdir)
    assert result.returncode == 78, result
    assert one_line(result) == (
        "fshipper: stream SHIPPER: exists and was not created by fshipper (no metadata fshipper=1); left alone "
        "(fshipper would change max_age 1h -> 7d); `fshipper setup --force` takes it over")
    assert result.stdout == ""
    assert stream_config(nats_server.url, "SHIPPER") == before
    assert stream_names(nats_server.url) == ["SHIPPER"]


def test_overlapping_subjects_are_one_line(confdir, nats_server):
    add_stream(nats_server.url, name="OPS", subjects=["shipper.>"])
    for flags in ((), ("--force",)):  # never someone else's stream, forced or not
        result = setup(confdir, *flags)
        assert result.returncode == 78, result
        assert one_line(result) == (
            "fshipper: stream SHIPPER: not created: its subjects shipper.> overlap with stream OPS, which fshipper "
            "does not manage (set SHIPPER_STREAM=OPS to use it, or another SHIPPER_SUBJECT)")
    assert stream_names(nats_server.url) == ["OPS"]


def test_a_narrower_operator_stream_inside_the_subjects_is_found_too(confdir, nats_server):
    add_stream(nats_server.url, name="OPS", subjects=["shipper.p0.web1"])
    result = setup(confdir)
    assert result.returncode == 78, result
    assert "overlap with stream OPS" in one_line(result)
    assert stream_names(nats_server.url) == ["OPS"]


def test_a_refusal_by_the_server_is_one_line(confdir, nats_server):
    """Whatever the server refuses (here: 3 replicas on a single server) is
    one line with its reason, never a traceback."""
    with open(confdir / "fshipper.env", "a") as env:
        env.write("SHIPPER_STREAM_REPLICAS=3\n")
    result = setup(confdir)
    assert result.returncode == 1, result  # the server's answer, not a conflict found by fshipper
    line = one_line(result)
    assert line.startswith("fshipper: stream SHIPPER: the server refused it: ") and "NATS error" in line, line
    assert stream_names(nats_server.url) == []


def test_dry_run_prints_what_would_change_and_changes_nothing(confdir, nats_server):
    fresh = setup(confdir, "--dry-run")
    assert fresh.returncode == 0, fresh
    assert fresh.stdout.splitlines() == ["stream SHIPPER: would be created", "consumer SHIPPER_p0: would be created"]
    assert stream_names(nats_server.url) == []

    add_stream(nats_server.url, name="SHIPPER", subjects=["shipper.>"], max_age=3600.0)
    before = stream_config(nats_server.url, "SHIPPER")
    conflict = setup(confdir, "--dry-run")
    assert conflict.returncode == 78, conflict
    assert conflict.stdout.splitlines()[0].startswith(
        "stream SHIPPER: exists and was not created by fshipper"), conflict.stdout
    forced = setup(confdir, "--dry-run", "--force")
    assert forced.returncode == 0, forced
    assert forced.stdout.splitlines() == ["stream SHIPPER: would be updated (max_age 1h -> 7d)",
                                          "consumer SHIPPER_p0: would be created"]
    assert stream_config(nats_server.url, "SHIPPER") == before


def test_force_takes_over_and_keeps_what_fshipper_does_not_set(confdir, nats_server):
    add_stream(nats_server.url, name="SHIPPER", subjects=["shipper.>"], max_age=3600.0, max_msgs=1000)
    result = setup(confdir, "--force")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["stream SHIPPER: updated (max_age 1h -> 7d)",
                                          "consumer SHIPPER_p0: created"]
    config = stream_config(nats_server.url, "SHIPPER")
    assert config["metadata"]["fshipper"] == "1" and config["max_age"] == 7 * 86400 * 10**9
    assert config["max_msgs"] == 1000  # the operator's own limit stays
    again = setup(confdir)  # now fshipper's: idempotent, no --force needed
    assert again.returncode == 0 and again.stdout.splitlines() == [
        "stream SHIPPER: unchanged", "consumer SHIPPER_p0: unchanged"], again


def test_an_operators_consumer_of_the_same_name_is_left_alone(confdir, nats_server):
    assert setup(confdir).returncode == 0

    async def replace_consumer(js):
        await js.delete_consumer("SHIPPER", "SHIPPER_p0")
        await js.add_consumer("SHIPPER", api.ConsumerConfig(
            durable_name="SHIPPER_p0", ack_policy=api.AckPolicy.EXPLICIT, filter_subject="shipper.>"))
    jetstream(nats_server.url, replace_consumer)
    result = setup(confdir)
    assert result.returncode == 78, result
    line = one_line(result)
    assert line.startswith("fshipper: consumer SHIPPER_p0: exists and was not created by fshipper"), line
    assert "filter_subject shipper.> -> shipper.p0.>" in line, line


def test_consumer_daemon_exits_78_on_a_conflict_at_start(confdir, nats_server):
    """Waiting never resolves a conflict: the daemon says why and exits 78
    (the unit fails, RestartPreventExitStatus=78), it does not retry forever."""
    add_stream(nats_server.url, name="SHIPPER", subjects=["shipper.>"], max_age=3600.0)
    result = subprocess.run([str(BIN / "fshipper-consumer"), "--foreground", "--config-dir", str(confdir)],
                            capture_output=True, text=True, env=clean_environ(), timeout=60)
    assert result.returncode == 78, result
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line or line.startswith("fshipper-consumer:")]
    assert errors and all("stream SHIPPER: exists and was not created by fshipper" in line for line in errors), \
        result.stderr
    assert "Traceback" not in result.stderr
    assert "fshipper setup --dry-run" in errors[-1]
