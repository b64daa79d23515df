"""rsyslog, the classic choice: imfile (inotify) -> omfwd TCP -> imtcp -> omfile.

Two rsyslogd processes run in the foreground with configs written here,
on a loopback port, with their own work directories: never the system
service.  The settings are those that gave rsyslog its best on a 2-core
machine while keeping its output byte-identical to the input:

- one main-queue worker on each side (more reorder lines under load);
- RFC 5424 octet-counted framing on the forward, and a lean template with
  a NILVALUE timestamp: formatting an RFC 3339 date for every line cost
  about a quarter of the forwarder's CPU;
- imfile with addMetadata="off": the file-name metadata per message made
  the forwarder 2-3x slower and several times bigger;
- parser.escapeControlCharactersOnReceive="off" on the receiver, and an
  output template of `%msg%` only (RFC 5424 parsing keeps leading spaces);
- a LinkedList action queue of 100k with dequeue batches of 1024.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from . import fanin_tcp
from .procs import BenchError, Proc, free_port, port_open, wait_for
from .sut import SystemUnderTest

QUEUE = 'queue.type="LinkedList" queue.size="100000" queue.dequeueBatchSize="1024"'

RECEIVER_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off")
main_queue(queue.workerThreads="1" {queue})
module(load="imtcp" maxSessions="2000")
template(name="perHost" type="string" string="{out}/%hostname%/out.log")
template(name="msgOnly" type="string" string="%msg%\\n")
action(type="omfile" dynaFile="perHost" template="msgOnly" createDirs="on"
       dynaFileCacheSize="{open_files}" ioBufferSize="256k" flushOnTXEnd="on")
input(type="imtcp" address="127.0.0.1" port="{port}")
"""

FORWARDER_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k" localHostname="{host}"
       parser.escapeControlCharactersOnReceive="off")
main_queue(queue.workerThreads="1" {queue})
module(load="imfile" mode="inotify")
template(name="lean5424" type="string"
         string="<%PRI%>1 - %HOSTNAME% %APP-NAME% - - - %msg%\\n")
ruleset(name="forward") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
         template="lean5424" TCP_Framing="octet-counted" {queue})
}}
input(type="imfile" file="{input}" tag="bench" ruleset="forward"
      addMetadata="off")
"""

# rsyslog's cache of open dynaFiles: the 1,000 hosts of the fan-in fit.
OPEN_FILES = 1000


def rsyslogd() -> str:
    path = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not Path(path).exists():
        raise BenchError("rsyslogd not found: apt-get install --no-install-recommends rsyslog")
    return path


class Rsyslog(SystemUnderTest):
    name = "rsyslog"
    role_names = {"producer": "rsyslogd forwarder", "consumer": "rsyslogd receiver"}

    def _daemon(self, role: str, template: str, **values: object) -> Proc:
        work = self.workdir / role
        work.mkdir()
        conf = self.workdir / f"{role}.conf"
        conf.write_text(template.format(work=work, queue=QUEUE, **values))
        return self.start(Proc(role, [rsyslogd(), "-n", "-f", str(conf),
                                      "-i", str(self.workdir / f"{role}.pid")],
                               self.workdir / f"{role}.log"))

    def start_sink(self) -> None:
        self.port = free_port()
        self._daemon("consumer", RECEIVER_CONF, out=self.out_dir,
                     port=self.port, open_files=OPEN_FILES)
        wait_for("rsyslog receiver port",
                 lambda: self.check_alive() or port_open(self.port), 20)

    def start_pipeline(self, input_file: Path, host: str) -> None:
        self.start_sink()
        self._daemon("producer", FORWARDER_CONF, port=self.port, host=host,
                     input=input_file)

    def publisher_argv(self, hosts: int, lines_per_host: int, line_size: int,
                       lines_per_message: int) -> Sequence[str]:
        return fanin_tcp.argv(self.port, hosts, lines_per_host, line_size,
                              lines_per_message, "octet")
