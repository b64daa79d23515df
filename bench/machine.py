"""What the figures were measured on."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from .procs import BenchError
from .sut_syslogng import syslog_ng


def _first_line(argv: List[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not found"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _syslog_ng_version() -> str:
    try:
        command, env = syslog_ng()
    except BenchError as e:
        return str(e)
    out = subprocess.run(command + ["--version"], capture_output=True, text=True,
                         timeout=20, env=env)
    return " ".join(out.stdout.splitlines()[:1] + out.stdout.splitlines()[3:4])


def describe() -> Dict[str, str]:
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    bindir = Path(sys.executable).parent
    nats = shutil.which("nats-server", path=str(bindir)) or shutil.which("nats-server")
    fshipper = shutil.which("fshipper", path=str(bindir)) or shutil.which("fshipper")
    return {
        "cpu": f"{os.cpu_count()} × {_cpu_model()}",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rsyslog": _first_line([shutil.which("rsyslogd") or "/usr/sbin/rsyslogd", "-v"])
        .replace(" compiled with:", ""),
        "syslog-ng": _syslog_ng_version(),
        "nats-server": _first_line([nats, "--version"]) if nats else "not found",
        "fshipper": _first_line([fshipper, "version"]) if fshipper else "not found",
    }
