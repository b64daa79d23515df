"""Trust between hosts: TLS is never downgraded, per-host permissions hold against
a real nats-server, and a pre-empted message id loses no line."""

import asyncio
import json
import socket
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Dict, List

import nats
import pytest

from fshipper import wire
from harness import BIN, Daemon, NatsServer, append_numbered, clean_environ, verdict, wait_until, write_env

# --- TLS is never downgraded ----------------------------------------------------------

PLAIN_INFO = (b'INFO {"server_id":"NFAKE","server_name":"fake","version":"2.10.0","proto":1,'
              b'"host":"127.0.0.1","port":4222,"headers":true,"auth_required":true,'
              b'"max_payload":1048576}\r\n')


class PlainInfoServer:
    """Speaks first like nats-server but does not ask for TLS (as a server without
    TLS, or someone in between who removed the request), and records every byte
    each client sends until it hangs up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: List[bytes] = []   # one entry per connection the client closed
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            conn.sendall(PLAIN_INFO)
            conn.settimeout(30)
            try:
                while chunk := conn.recv(65536):
                    data += chunk
            except OSError:
                pass
        with self.lock:
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("scheme, with_ca", [("tls", False), ("nats", True)], ids=["tls-url", "nats-url-with-ca"])
def test_no_byte_is_sent_when_the_server_does_not_start_tls(pki, pipeline, scheme, with_ca):
    fake = PlainInfoServer()
    try:
        extra = {"NATS_CA": pki / "ca.pem"} if with_ca else {}
        p = pipeline(NATS_URL=f"{scheme}://web1:s3cret-pw@127.0.0.1:{fake.port}", **extra)
        p.log.write_bytes(b"a line that must not travel in plain text\n")
        p.consumer.start()
        p.producer.start()
        # The daemons connected, hung up, and tried again.
        wait_until(lambda: len(fake.received) >= 4, 40, p.logs)
        assert fake.received == [b""] * len(fake.received), fake.received  # not even CONNECT
        wait_until(lambda: all("did not start TLS" in d.tail() for d in (p.producer, p.consumer)), 10, p.logs)
        assert p.producer.running() and p.consumer.running(), p.logs()
        logs = p.logs()
        assert "ERROR NATS: 127.0.0.1:" in logs
        assert "s3cret-pw" not in logs and "web1:***@127.0.0.1" in logs
    finally:
        fake.close()


# --- per-host users on a real nats-server ------------------------------------------------

HOSTS = ("web1.example.net", "web2.example.net")
USERS = {"web1.example.net": "web1", "web2.example.net": "web2", "consumer": "consumer"}
PARTITIONS = 4   # as in the README's example
README = Path(__file__).resolve().parents[2] / "README.md"


def fshipper(*args: str) -> str:
    result = subprocess.run([str(BIN / "fshipper"), *args], capture_output=True, text=True,
                            env=clean_environ(), timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def readme_server_config() -> str:
    """The nats-server configuration of the README's Security section."""
    section = README.read_text().split("### nats-server configuration")[1]
    return section.split("```text\n")[1].split("```")[0]


def password(user: str) -> str:
    return f"{USERS[user].upper()}-PASSWORD"   # the README's placeholders


class Secured:
    """The README's nats-server configuration (TLS, one user per host and one for the
    consumer), checked against what `fshipper permissions` prints, with a config
    dir per daemon."""

    def __init__(self, root: Path, pki: Path) -> None:
        self.root, self.pki = root, pki
        self.out = root / "out"
        self.server = NatsServer(root / "js")
        self.common = {"SHIPPER_SUBJECT": "shipper", "SHIPPER_PARTITIONS": PARTITIONS,
                       "NATS_CA": pki / "ca.pem"}
        self.consumer_dir = self._config("consumer", "consumer.env", {
            "SHIPPER_OUTPUT": "app.log.%Y%m%d", "SHIPPER_DIRECTORY": self.out,
            "SHIPPER_READ_PARTITIONS": ",".join(str(n) for n in range(PARTITIONS))})
        self.logs: Dict[str, Path] = {}
        self.producer_dirs = {}
        for host in HOSTS:
            self.logs[host] = root / host / "app.log"
            self.logs[host].parent.mkdir(parents=True)
            self.producer_dirs[host] = self._config(host, "producer.env", {
                "SHIPPER_FILE": self.logs[host], "HOSTNAME": host, "SHIPPER_ROTATE_WAIT": "1s"})
        config = readme_server_config()
        check_permissions_in(config, self.consumer_dir)
        self.config = root / "nats.conf"
        self.config.write_text(config.replace("/etc/nats/", f"{pki}/"))
        self.server.config = str(self.config)
        self.daemons: List[Daemon] = []

    def url(self, user: str) -> str:
        return f"tls://{USERS[user]}:{password(user)}@127.0.0.1:{self.server.port}"

    def _config(self, user: str, role_file: str, role: dict) -> Path:
        d = self.root / f"etc-{user}"
        write_env(d / "fshipper.env", {**self.common, "NATS_URL": self.url(user),
                                       "SHIPPER_STATE_DIR": self.root / f"state-{user}"})
        write_env(d / role_file, role)
        return d

    def start(self, role: str, config_dir: Path, name: str) -> Daemon:
        daemon = Daemon(role, config_dir, self.root / f"{name}.log").start()
        self.daemons.append(daemon)
        return daemon

    def all_logs(self) -> str:
        return "\n".join(f"--- {d.log.name}\n{d.tail()}" for d in self.daemons)

    def output(self, host: str) -> bytes:
        return b"".join(p.read_bytes() for p in sorted((self.out / host).glob("app.log.*")))

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki / "ca.pem"))

    def stop(self) -> None:
        for daemon in self.daemons:
            if daemon.running():
                daemon.stop(kill=True)
        self.server.stop()


def check_permissions_in(config: str, admin_dir: Path) -> None:
    """Each user's permissions in `config` are what `fshipper permissions` prints."""
    compact = "".join(config.split())
    admin = ["--config-dir", str(admin_dir)]
    for user in USERS:
        role = ["--role", "consumer"] if user == "consumer" else ["--role", "producer", "--host", user]
        printed = json.loads(fshipper("permissions", *role, *admin))
        entry = f'{{user:"{USERS[user]}",password:"{password(user)}",permissions:' \
                f'{json.dumps(printed, separators=(",", ":"))}}}'
        assert entry in compact, f"the README's {user} differs from: {json.dumps(printed)}"


@pytest.fixture
def secured(tmp_path, pki):
    s = Secured(tmp_path, pki)
    s.server.start()
    yield s
    s.stop()


def start_all(s: Secured) -> Dict[str, Daemon]:
    consumer = s.start("consumer", s.consumer_dir, "consumer")
    wait_until(lambda: consumer.tail().count("consuming") == PARTITIONS, 30, s.all_logs)
    return {host: s.start("producer", s.producer_dirs[host], host) for host in HOSTS}


def shipped(s: Secured, host: str) -> bool:
    return len(s.output(host)) >= s.logs[host].stat().st_size


async def attempt_as(url: str, tls: ssl.SSLContext, inbox_prefix: str, publish: List[str],
                     subscribe: List[str]) -> Dict[str, bool]:
    """Publish on and subscribe to each subject with one host's credentials; returns,
    for each "publish <subject>" and "subscribe <subject>", whether the server
    reported a permissions violation."""
    errors: List[str] = []

    async def error_cb(e: Exception) -> None:
        errors.append(str(e).lower())

    def denied() -> Dict[str, bool]:
        found = {}
        for kind, verb, subjects in (("publish", "publish", publish), ("subscribe", "subscription", subscribe)):
            for subject in subjects:
                text = f'violation for {verb} to "{subject.lower()}"'
                found[f"{kind} {subject}"] = any(text in e for e in errors)
        return found

    nc = await nats.connect(url, tls=tls, inbox_prefix=inbox_prefix, error_cb=error_cb,
                            allow_reconnect=False, connect_timeout=5)
    try:
        for subject in publish:
            await nc.publish(subject, b"forged line")
        for subject in subscribe:
            await nc.subscribe(subject)
        await nc.flush()
        deadline = asyncio.get_running_loop().time() + 3
        while not all(denied().values()) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return denied()
    finally:
        await nc.close()


def test_a_host_can_neither_impersonate_nor_read_nor_silence_another(secured):
    s = secured
    web1, web2 = HOSTS
    daemons = start_all(s)
    for host in HOSTS:
        append_numbered(s.logs[host], 1, 5_000)
    wait_until(lambda: all(shipped(s, h) for h in HOSTS), 60, s.all_logs)

    web2_subject = wire.subject("shipper", web2, PARTITIONS)
    own_subject = wire.subject("shipper", web1, PARTITIONS)
    wrong_partition = next(f"shipper.p{n}.{web1}" for n in range(PARTITIONS) if f"shipper.p{n}." not in own_subject)
    forbidden_publish = [
        web2_subject,                                            # impersonate web2
        wrong_partition,                                         # its own name, another partition
        "$JS.API.CONSUMER.CREATE.SHIPPER.spy.shipper.>",         # read the stream
        "$JS.API.CONSUMER.CREATE.SHIPPER.spy",
        "$JS.API.CONSUMER.DURABLE.CREATE.SHIPPER.spy",
        "$JS.API.CONSUMER.MSG.NEXT.SHIPPER.SHIPPER_p0",          # take the consumer's messages
        "$JS.API.STREAM.MSG.GET.SHIPPER",
        "$JS.API.DIRECT.GET.SHIPPER",
        "$JS.API.STREAM.PURGE.SHIPPER",                           # cut
        "$JS.API.STREAM.DELETE.SHIPPER",
        "$JS.API.STREAM.MSG.DELETE.SHIPPER",
        "$JS.API.STREAM.UPDATE.SHIPPER",
        "$JS.API.CONSUMER.DELETE.SHIPPER.SHIPPER_p0",
        "$JS.ACK.SHIPPER.SHIPPER_p0.1.1.1.1.0",                   # acknowledge what it never got
        f"{wire.inbox_prefix(web2)}.forged",                      # confirm what web2 never stored
        f"{wire.INBOX_CONSUMER}.forged",                          # feed the consumer
    ]
    forbidden_subscribe = [
        f"{wire.inbox_prefix(web2)}.>",                          # web2's PubAcks
        f"{wire.INBOX_CONSUMER}.>",                              # the consumer's deliveries
        "_INBOX.>",
        "shipper.>",                                             # everyone's lines, live
        web2_subject,
    ]
    denied = asyncio.run(attempt_as(s.url(web1), s.tls(), wire.inbox_prefix(web1),
                                    forbidden_publish + [own_subject],
                                    forbidden_subscribe + [f"{wire.inbox_prefix(web1)}.>"]))
    assert not denied.pop(f"publish {own_subject}") and not denied.pop(f"subscribe {wire.inbox_prefix(web1)}.>"), \
        "the checks prove nothing if what web1 may do is reported as denied too"
    assert all(denied.values()), {k: v for k, v in denied.items() if not v}

    # The daemons needed nothing they were not given, and kept shipping.
    for host in HOSTS:
        append_numbered(s.logs[host], 5_001, 5_000)
    wait_until(lambda: all(shipped(s, h) for h in HOSTS), 60, s.all_logs)
    assert s.output(web2) == s.logs[web2].read_bytes()              # nothing forged in web2's file
    out1 = s.output(web1)
    assert verdict(out1, range(1, 10_001)) == {"lines": 10_000, "received": 10_000, "lost": 0,
                                               "duplicated": 0, "reordered": 0}
    assert out1.replace(b"forged line\n", b"") == s.logs[web1].read_bytes()  # web1 may write as itself
    assert "violation" not in s.all_logs().lower(), s.all_logs()
    assert all(d.running() for d in daemons.values())


def next_headers(position: Path, log: Path, host: str, appended: int) -> Dict[str, str]:
    """The headers the producer will give the next `appended` bytes, as anyone who
    knows its state (origin, file number) and the file's size can work them out."""
    state = json.loads(position.read_text())
    size = log.stat().st_size
    assert state["offset"] == size
    ref = state["file"]
    pos = wire.Position(state["origin"], ref["gen"], size, size + appended, ref["prev_gen"], ref["prev_end"])
    return wire.headers(host, pos, more=False)


def confirmed_all(position: Path, log: Path) -> bool:
    return position.exists() and json.loads(position.read_text())["offset"] == log.stat().st_size


def numbered(first: int, count: int) -> bytes:
    return b"".join(f"line {n:09d}\n".encode() for n in range(first, first + count))


def test_a_pre_empted_message_id_loses_no_line(secured):
    s = secured
    web1, web2 = HOSTS
    daemons = start_all(s)
    append_numbered(s.logs[web1], 1, 1_000)
    position = s.root / f"state-{web1}" / "producer.position"
    wait_until(lambda: shipped(s, web1) and confirmed_all(position, s.logs[web1]), 30, s.all_logs)

    new_lines = numbered(1_001, 200)
    msg_id = next_headers(position, s.logs[web1], web1, len(new_lines))[wire.HDR_MSG_ID]

    async def pre_empt() -> bool:
        # web2's own credentials, its own subject: nothing a permission can refuse.
        nc = await nats.connect(s.url(web2), tls=s.tls(), inbox_prefix=wire.inbox_prefix(web2))
        try:
            ack = await nc.jetstream().publish(wire.subject("shipper", web2, PARTITIONS), b"pre-empted",
                                               headers={wire.HDR_MSG_ID: msg_id})
            return ack.duplicate
        finally:
            await nc.close()

    assert asyncio.run(pre_empt()) is not True
    with open(s.logs[web1], "ab") as f:
        f.write(new_lines)   # one write: the producer reads it as one message, with that id
    wait_until(lambda: shipped(s, web1), 30, s.all_logs)   # (without the fix: never)
    append_numbered(s.logs[web1], 1_201, 1_000)
    wait_until(lambda: shipped(s, web1), 30, s.all_logs)
    out = s.output(web1)
    assert out == s.logs[web1].read_bytes(), verdict(out, range(1, 2_201))
    producer_log = daemons[web1].tail(20_000)
    assert f"ERROR the server already had message id {msg_id} before this producer sent it" in producer_log, \
        producer_log


def test_a_message_stored_by_the_previous_run_is_a_warning_and_written_once(pipeline, nats_server):
    """A run that stopped after the server stored a message but before it heard so:
    the next run's send of the same range is a duplicate; it is sent again under a
    fresh id (stored twice) and written once."""
    p = pipeline()
    append_numbered(p.log, 1, 1_000)
    p.consumer.start()
    p.producer.start()
    position = p.state / "producer.position"
    wait_until(lambda: p.output_files() and p.output() == p.log.read_bytes()
               and confirmed_all(position, p.log), 30, p.logs)
    assert p.producer.stop() == 0
    new_lines = numbered(1_001, 200)
    headers = next_headers(position, p.log, p.host, len(new_lines))
    with open(p.log, "ab") as f:
        f.write(new_lines)

    async def as_the_previous_run() -> None:
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jetstream().publish(wire.subject("shipper", p.host, 0), new_lines[:-1], headers=headers)
        finally:
            await nc.close()

    asyncio.run(as_the_previous_run())
    p.producer.start()
    wait_until(lambda: confirmed_all(position, p.log), 30, p.logs)
    append_numbered(p.log, 1_201, 1_000)   # and on from there
    wait_until(lambda: p.output() == p.log.read_bytes(), 30, p.logs)
    log = p.producer.tail(20_000)
    assert f"WARNING the server already had message id {headers[wire.HDR_MSG_ID]} (sent before" in log, log
    assert "ERROR" not in log
