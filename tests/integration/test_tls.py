"""NATS_CA, NATS_CERTIFICATE and NATS_KEY against a nats-server that verifies clients."""

import shutil
import subprocess

import pytest

from harness import NatsServer, append_numbered, wait_until

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A CA, a server and a client certificate with the extensions that strict
    verification (Python 3.13's default) asks for."""
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
