"""fshipper status as a monitoring system runs it: --json, a verdict per line and
the Nagios exit status, for a healthy pipeline, a producer that cannot read its
file, and a consumer paused on a full disk."""

import json
import os
import shutil
import subprocess

import pytest

from harness import BIN, append_numbered, clean_environ, tmpfs, wait_until

ROOT = os.geteuid() == 0


def status(p, *args):
    result = subprocess.run([str(BIN / "fshipper"), "status", "--json", "--timeout", "5",
                             "--config-dir", str(p.config), *args],
                            capture_output=True, text=True, env=clean_environ(), timeout=60)
    return result.returncode, json.loads(result.stdout) if result.stdout.startswith("{") else result


def lines(report, kind):
    return [line for line in report["lines"] if line["kind"] == kind]


def test_a_healthy_pipeline_is_ok(pipeline):
    p = pipeline()
    append_numbered(p.log, 1, 500)
    p.consumer.start()
    p.wait_consuming()
    p.producer.start()
    size = p.log.stat().st_size
    wait_until(lambda: len(p.output()) == size, 30, p.logs)
    def settled():  # the last acknowledgements reach the server a moment after the writes
        code, report = status(p)
        return (code, report) if code == 0 and not lines(report, "partition")[0]["unacknowledged"] else None

    code, report = wait_until(settled, 20, lambda: f"status to be ok: {status(p)}\n{p.logs()}")
    assert report["verdict"] == "ok" and report["exit"] == 0
    producer, = lines(report, "producer")
    assert producer["verdict"] == "ok", producer
    assert (producer["file"], producer["size"], producer["confirmed"]) == (str(p.log), size, size)
    assert producer["lag_bytes"] == 0 and producer["lag_seconds"] == 0 and producer["running"]
    assert producer["last_confirmation"] and producer["last_error"] is None
    partition, = lines(report, "partition")
    assert partition["name"] == "SHIPPER_p0" and partition["verdict"] == "ok"
    assert (partition["pending"], partition["unacknowledged"], partition["paused"]) == (0, 0, False)
    text = subprocess.run([str(BIN / "fshipper"), "status", "--config-dir", str(p.config)],
                          capture_output=True, text=True, env=clean_environ(), timeout=60)
    assert text.returncode == 0
    assert text.stdout.splitlines()[0] == "OK: 0 critical, 0 warning, 3 ok", text.stdout
    assert f"ok producer producer: {p.log} {size} bytes, confirmed {size} " in text.stdout


# Root reads any file: without these two capabilities it is held to the file's mode.
AS_MORTAL = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search"] if ROOT else []


def test_a_producer_that_cannot_read_its_file_is_critical(pipeline):
    """The file is mode 000 (and the producer, if root, runs without the
    capabilities that override it): the producer waits for it, says why in its
    status file, and status exits 2 naming the file."""
    if ROOT and not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root's override of file modes")
    p = pipeline()
    append_numbered(p.log, 1, 100)
    p.log.chmod(0o000)
    with open(p.producer.log, "ab") as log:
        proc = subprocess.Popen(AS_MORTAL + [str(BIN / "fshipper-producer"), "--foreground",
                                             "--config-dir", str(p.config)],
                                stdout=log, stderr=subprocess.STDOUT, env=clean_environ())
    try:
        wait_until(lambda: "is not readable" in p.producer.tail(), 20, p.logs)
        code, report = status(p)
        assert code == 2 and report["verdict"] == "critical", report
        producer, = lines(report, "producer")
        assert producer["verdict"] == "critical" and producer["running"], producer
        assert producer["problems"]["file"]["text"] == f"{p.log} is not readable"
        assert producer["lag_bytes"] == p.log.stat().st_size and producer["confirmed"] == 0
        assert f"{p.log} is not readable for " in producer["text"]
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture
def small_disk(tmp_path):
    if not ROOT:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    with tmpfs(tmp_path / "out", "1m") as out:
        yield out


def test_a_consumer_paused_on_a_full_disk_is_critical_until_it_writes_again(pipeline, small_disk):
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leaves less than the lines need
    p = pipeline()
    append_numbered(p.log, 1, 10_000, width=20)  # 200 kB
    p.consumer.start()
    p.wait_consuming()
    p.producer.start()
    wait_until(lambda: "cannot write" in p.consumer.tail(), 30, p.logs)
    code, report = wait_until(lambda: (lambda r: r if r[0] == 2 else None)(status(p)), 20,
                              lambda: f"status to be critical: {status(p)}\n{p.logs()}")
    partition, = lines(report, "partition")
    assert partition["verdict"] == "critical" and partition["paused"], partition
    assert "No space left on device" in partition["paused_why"] and partition["paused_since"]
    assert "paused since " in partition["text"]
    assert lines(report, "producer")[0]["verdict"] == "ok"  # the server has the lines
    ballast.unlink()
    size = p.log.stat().st_size
    wait_until(lambda: len(p.output()) == size, 60, p.logs)
    code, report = wait_until(lambda: (lambda r: r if r[0] == 0 else None)(status(p)), 20,
                              lambda: f"status to be ok again: {status(p)}\n{p.logs()}")
    assert not lines(report, "partition")[0]["paused"]


def admin(confdir, *args, env=None):
    return subprocess.run([str(BIN / "fshipper"), *args, "--config-dir", str(confdir)],
                          capture_output=True, text=True, env=clean_environ(env), timeout=60)


def test_waiting_for_a_server_that_does_not_answer_shows_progress(pipeline, tmp_path):
    from harness import free_port

    p = pipeline(NATS_URL=f"nats://127.0.0.1:{free_port()}")
    url = f"nats://127.0.0.1:{p.config.joinpath('fshipper.env').read_text().split(':')[-1].split()[0]}"
    setup = admin(p.config, "setup", "--timeout", "4")
    assert setup.returncode == 1 and "Traceback" not in setup.stderr
    progress = [l for l in setup.stderr.splitlines() if l.startswith("fshipper: waiting for a NATS server")]
    assert progress == [f"fshipper: waiting for a NATS server at {url} (3s of 4s)"], setup.stderr
    assert setup.stderr.splitlines()[-1] == f"fshipper: no NATS server answered at {url} within 4s"
    code, report = status(p)
    assert code == 2 and lines(report, "nats")[0]["verdict"] == "critical"


def test_a_nats_api_error_in_setup_is_one_line(pipeline):
    p = pipeline()
    result = admin(p.config, "setup", env={"SHIPPER_STREAM_REPLICAS": "3"})  # one server, no cluster
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr == ("fshipper: stream SHIPPER: the server refused it: replicas > 1 not supported "
                             "in non-clustered mode (NATS error 10074)\n"), result.stderr


def test_local_shows_the_producers_without_asking_the_server(pipeline):
    from harness import free_port

    p = pipeline(NATS_URL=f"nats://127.0.0.1:{free_port()}")  # nothing answers there
    result = admin(p.config, "status", "--local", "--json")
    assert result.returncode == 1 and result.stderr == "", result.stderr  # never ran: a warning
    report = json.loads(result.stdout)
    assert [line["kind"] for line in report["lines"]] == ["producer"]
    assert "has never run" in report["lines"][0]["text"]


def test_a_producer_cut_off_from_nats_longer_than_the_threshold_is_critical(pipeline, nats_server):
    p = pipeline()
    append_numbered(p.log, 1, 10)
    p.consumer.start()
    p.wait_consuming()
    p.producer.start()
    wait_until(lambda: len(p.output()) == p.log.stat().st_size, 20, p.logs)
    nats_server.stop()
    append_numbered(p.log, 11, 10)   # waits in the file: lag
    wait_until(lambda: "disconnected" in p.producer.tail(), 20, p.logs)
    for threshold, expected in (("600", "warning"), ("1", "critical")):
        def judged():
            result = admin(p.config, "status", "--local", "--json", "--warning", "0.5", "--critical", threshold)
            line = json.loads(result.stdout)["lines"][0]
            # lag: the 10 lines written since, once the position confirmed before is saved
            return (result.returncode, line) if line["verdict"] == expected and line["lag_bytes"] == 150 else None
        code, producer = wait_until(judged, 20, f"a {expected} verdict")
        assert code == {"warning": 1, "critical": 2}[expected]
        assert producer["problems"]["nats"]["text"].startswith("NATS: "), producer
