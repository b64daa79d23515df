"""NATS_CA, NATS_CERTIFICATE and NATS_KEY against a nats-server that verifies clients."""

import shutil

import pytest

from harness import NatsServer, append_numbered, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def test_shipping_over_tls_with_a_client_certificate(tmp_path, pki, pipeline):
    conf = tmp_path / "nats-tls.conf"
    conf.write_text(f"""
tls {{
  cert_file: "{pki}/server.pem"
  key_file: "{pki}/server-key.pem"
  ca_file: "{pki}/ca.pem"
  verify: true
}}
""")
    server = NatsServer(tmp_path / "js", config=str(conf)).start()
    try:
        p = pipeline(NATS_URL=f"tls://127.0.0.1:{server.port}", NATS_CA=pki / "ca.pem",
                     NATS_CERTIFICATE=pki / "client.pem", NATS_KEY=pki / "client-key.pem")
        append_numbered(p.log, 1, 2_000)
        p.consumer.start()
        p.producer.start()
        wait_until(lambda: p.output_files() and len(p.output()) >= p.log.stat().st_size, 30, p.logs)
        assert p.output() == p.log.read_bytes()
    finally:
        server.stop()   # the fixture stops the daemons
