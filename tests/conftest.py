import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon, NatsServer, need_program, wait_until, write_env  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Long runs (marker chaos_long) only where the marker expression names them (`make chaos`)."""
    if "chaos_long" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("chaos_long")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("chaos_long")]


@pytest.fixture
def nats_server(tmp_path):
    server = NatsServer(tmp_path / "jetstream").start()
    yield server
    server.stop()


class Pipeline:
    """A config dir, a followed file, an output dir and the two daemons."""

    def __init__(self, root: Path, url: str, host: str = "web1.example.net", **extra) -> None:
        self.root = root
        self.config = root / "etc"
        self.log = root / "var" / "app.log"
        self.out = root / "out"
        self.state = root / "state"
        self.host = host
        self.log.parent.mkdir(parents=True, exist_ok=True)
        common = {"NATS_URL": url, "SHIPPER_SUBJECT": "shipper", "SHIPPER_STATE_DIR": self.state}
        common.update({k: v for k, v in extra.items() if k.startswith("NATS_") or k in (
            "SHIPPER_SUBJECT", "SHIPPER_MODE", "SHIPPER_STREAM", "SHIPPER_STREAM_REPLICAS",
            "SHIPPER_STREAM_DUPLICATE_WINDOW", "SHIPPER_PARTITIONS", "SHIPPER_LOG_LEVEL")})
        write_env(self.config / "fshipper.env", common)
        producer = {"SHIPPER_FILE": self.log, "HOSTNAME": host, "SHIPPER_ROTATE_WAIT": "1s"}
        consumer = {"SHIPPER_OUTPUT": "app.log.%Y%m%d", "SHIPPER_DIRECTORY": self.out}
        for key, value in extra.items():
            if key not in common:
                (producer if key in ("SHIPPER_FILE", "HOSTNAME", "SHIPPER_BATCH_BYTES", "SHIPPER_MAX_INFLIGHT",
                                     "SHIPPER_ROTATE_WAIT") else consumer)[key] = value
        write_env(self.config / "producer.env", producer)
        write_env(self.config / "consumer.env", consumer)
        self.producer = Daemon("producer", self.config, root / "producer.log")
        self.consumer = Daemon("consumer", self.config, root / "consumer.log")

    def output_files(self, host: str = None):
        return sorted((self.out / (host or self.host)).glob("app.log.*"))

    def output(self, host: str = None) -> bytes:
        return b"".join(p.read_bytes() for p in self.output_files(host))

    def wait_consuming(self) -> None:
        """Until the consumer has its pull consumer (and so the stream) in place."""
        wait_until(lambda: "consuming" in self.consumer.tail(), 20, lambda: f"the consumer\n{self.logs()}")

    def logs(self) -> str:
        return f"--- producer\n{self.producer.tail()}\n--- consumer\n{self.consumer.tail()}"

    def stop(self) -> None:
        for daemon in (self.producer, self.consumer):
            if daemon.running():
                daemon.stop(kill=True)


@pytest.fixture
def pipeline(request, tmp_path):
    """Pipelines on the test's nats-server, started only if no NATS_URL is given;
    each in `root` (several hosts, each its own) or else in the test's tmp_path."""
    made = []

    def make(root: Path = None, **extra) -> Pipeline:
        url = extra.pop("NATS_URL", None) or request.getfixturevalue("nats_server").url
        p = Pipeline(root or tmp_path, url, **extra)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server and a client certificate with the extensions that strict
    verification (Python 3.13's default) asks for."""
    need_program("openssl", "openssl")
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=fshipper test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", "ca-key.pem", "-out", "ca.pem", cwd=d)
    leaf = "keyUsage=critical,digitalSignature,keyEncipherment\nsubjectKeyIdentifier=hash\n" \
           "authorityKeyIdentifier=keyid,issuer\n"
    (d / "server.ext").write_text(leaf + "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text(leaf + "extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=d)
    return d
