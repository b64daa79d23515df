"""A password or token in NATS_URL is never printed: not by check-config, not in an error, not in a log."""

import signal
import subprocess

import pytest

from harness import BIN, NatsServer, append_numbered, clean_environ, free_port, wait_until, write_env

PASSWORD = "Pw-9f3kQ7zX"
TOKEN = "Tk-4mW8yR2v"


@pytest.fixture
def server(tmp_path):
    """A nats-server that takes only user `shipper` with PASSWORD."""
    conf = tmp_path / "nats.conf"
    conf.write_text(f'authorization {{ user: shipper, password: "{PASSWORD}" }}\n')
    s = NatsServer(tmp_path / "jetstream", config=str(conf)).start()
    yield s
    s.stop()


def check_config(config_dir, role, **env):
    return subprocess.run([str(BIN / "fshipper"), "check-config", "--role", role, "--config-dir", str(config_dir)],
                          capture_output=True, text=True, env=clean_environ(env), timeout=30)


def test_check_config_and_its_errors_print_no_secret(tmp_path):
    write_env(tmp_path / "fshipper.env", {
        "NATS_URL": f"nats://shipper:{PASSWORD}@n1:4222,nats://{TOKEN}@n2:4222", "SHIPPER_SUBJECT": "shipper"})
    write_env(tmp_path / "producer.env", {"SHIPPER_FILE": "/var/log/app.log", "HOSTNAME": "web1"})
    write_env(tmp_path / "consumer.env", {"SHIPPER_OUTPUT": "/var/log/central/app.log"})
    for role in ("producer", "consumer"):
        result = check_config(tmp_path, role)
        assert result.returncode == 0, result.stderr
        assert f"NATS_URL=nats://shipper:***@n1:4222,nats://***@n2:4222  # {tmp_path}/fshipper.env:1" \
            in result.stdout
        assert PASSWORD not in result.stdout + result.stderr and TOKEN not in result.stdout + result.stderr
    bad = check_config(tmp_path, "producer", NATS_URL=f"nats://shipper:{PASSWORD}@n1:99999")
    assert bad.returncode == 78 and "'nats://shipper:***@n1:99999' has an invalid port" in bad.stderr, bad.stderr
    assert PASSWORD not in bad.stdout + bad.stderr


def test_a_running_pipeline_logs_no_secret(pipeline, server):
    dead = free_port()  # a server that does not answer: the client tries it and says so
    url = f"nats://shipper:{PASSWORD}@127.0.0.1:{dead},nats://shipper:{PASSWORD}@127.0.0.1:{server.port}"
    p = pipeline(NATS_URL=url, SHIPPER_LOG_LEVEL="debug")
    p.consumer.start()
    p.wait_consuming()
    p.producer.start()
    append_numbered(p.log, 1, 5)
    wait_until(lambda: p.output().count(b"\n") == 5, 30, p.logs)  # the password did connect them
    p.producer.signal(signal.SIGHUP)  # a reload connects again, and logs it
    wait_until(lambda: p.producer.tail(100_000).count("NATS: connected") >= 2, 30, p.logs)
    append_numbered(p.log, 6, 5)
    wait_until(lambda: p.output().count(b"\n") == 10, 30, p.logs)
    env = p.config / "fshipper.env"  # a reload refused for a bad port logs the URL too
    env.write_text(env.read_text().replace(f":{server.port}", ":99999"))
    p.producer.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in p.producer.tail(), 30, p.logs)
    assert "'nats://shipper:***@127.0.0.1:99999' has an invalid port" in p.producer.tail()
    assert p.producer.stop() == 0 and p.consumer.stop() == 0
    logs = p.producer.log.read_text() + p.consumer.log.read_text()
    assert logs.count(f"NATS: connecting to nats://shipper:***@127.0.0.1:{dead}, "
                      f"nats://shipper:***@127.0.0.1:{server.port}") >= 3, logs
    assert PASSWORD not in logs, logs
