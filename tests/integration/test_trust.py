"""Trust between hosts: TLS is never downgraded."""

import socket
import threading
from typing import List

import pytest

from harness import wait_until

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
