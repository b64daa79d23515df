"""syslog-ng: file() -> network() TCP -> network() -> file() per host.

Two syslog-ng processes run in the foreground with configs written here,
on a loopback port, each with its own pidfile, control socket and persist
file in the run's directory: never the system service.  The settings are
those that gave syslog-ng its best on a 2-core machine while keeping its
output byte-identical to the input (see bench/README.md):

- file() with flags(no-parse): the whole line is $MSG.  On 3.38 neither
  file() nor wildcard-file() follows a file's content with inotify
  (wildcard-file() watches only the directory; follow-method() came in
  4.9): both stat the file every follow-freq(), so a short interval buys
  latency at the price of an idle wake-up;
- a lean RFC 5424 line on the forward, with a NILVALUE timestamp, parsed
  by flags(syslog-protocol) on the receiver (which keeps a message's
  leading spaces), and an output template of ${MSG} only;
- flow-control on both log paths with windows and FIFOs of 100k, so
  nothing is dropped and nothing needs a disk-buffer.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from . import fanin_tcp
from .procs import BenchError, Proc, free_port, port_open, wait_for
from .sut import SystemUnderTest

# The poll interval of the followed file, in seconds (see above).
FOLLOW_FREQ = "0.001"
WINDOW = 100_000

OPTIONS = """\
@version: 3.38
options {{ keep-hostname(yes); chain-hostnames(no); use-dns(no); use-fqdn(no);
  dns-cache(no); stats-freq(0); mark-freq(0); log-msg-size(65536);
  log-fifo-size({window}); }};
"""

RECEIVER_CONF = OPTIONS + """\
source s_net {{ network(ip("127.0.0.1") port({port}) transport(tcp)
  flags(syslog-protocol) max-connections({connections})
  log-iw-size({window}) log-fetch-limit(1000)); }};
destination d_host {{ file("{out}/$HOST/out.log" template("${{MSG}}\\n")
  create-dirs(yes) time-reap(3600)); }};
log {{ source(s_net); destination(d_host); flags(flow-control); }};
"""

FORWARDER_CONF = OPTIONS + """\
source s_file {{ file("{input}" flags(no-parse) follow-freq({follow})
  log-fetch-limit(1000) log-iw-size({window}) host-override("{host}")); }};
destination d_fwd {{ network("127.0.0.1" port({port}) transport(tcp)
  template("<13>1 - $HOST bench - - - $MSG\\n")); }};
log {{ source(s_file); destination(d_fwd); flags(flow-control); }};
"""

# Connections the receiver takes: the forwarder, or the fan-in's one, and
# the readiness probe; each gets log-iw-size / max-connections of window.
CONNECTIONS = 4


def syslog_ng() -> Tuple[List[str], Optional[Dict[str, str]]]:
    """The command and environment of the syslog-ng to run: the machine's,
    else the one `make bench-syslog-ng` unpacked beside this environment
    (Debian's syslog-ng-core and rsyslog packages conflict)."""
    path = shutil.which("syslog-ng") or "/usr/sbin/syslog-ng"
    if Path(path).exists():
        return [path], None
    root = Path(sys.prefix) / "syslog-ng" / "usr"
    if not (root / "sbin" / "syslog-ng").exists():
        raise BenchError("syslog-ng not found: run `make bench-syslog-ng` as root")
    lib = root / "lib" / "syslog-ng"
    modules = sorted(p for p in lib.iterdir() if p.is_dir())[-1]
    return ([str(root / "sbin" / "syslog-ng"), "--module-path", str(modules)],
            dict(os.environ, LD_LIBRARY_PATH=str(lib)))


class SyslogNg(SystemUnderTest):
    name = "syslog-ng"
    role_names = {"producer": "syslog-ng forwarder", "consumer": "syslog-ng receiver"}

    def _daemon(self, role: str, template: str, **values: object) -> Proc:
        conf = self.workdir / f"{role}.conf"
        conf.write_text(template.format(window=WINDOW, **values))
        base = self.workdir / role
        command, env = syslog_ng()
        return self.start(Proc(role, command + [
            "--foreground", "--stderr", "--cfgfile", str(conf), "--pidfile", f"{base}.pid",
            "--control", f"{base}.ctl", "--persist-file", f"{base}.persist"],
            self.workdir / f"{role}.log", env=env))

    def start_sink(self) -> None:
        self.port = free_port()
        self._daemon("consumer", RECEIVER_CONF, out=self.out_dir, port=self.port,
                     connections=CONNECTIONS)
        wait_for("syslog-ng receiver port",
                 lambda: self.check_alive() or port_open(self.port), 20)

    def start_pipeline(self, input_file: Path, host: str) -> None:
        self.start_sink()
        self._daemon("producer", FORWARDER_CONF, port=self.port, host=host,
                     input=input_file, follow=FOLLOW_FREQ)

    def publisher_argv(self, hosts: int, lines_per_host: int, line_size: int,
                       lines_per_message: int) -> Sequence[str]:
        return fanin_tcp.argv(self.port, hosts, lines_per_host, line_size,
                              lines_per_message, "newline")
