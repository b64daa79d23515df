"""Command lines: fshipper-producer, fshipper-consumer and the fshipper admin tool."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import List, Optional

from . import __version__, config
from .config import EX_CONFIG, ConfigError, DependencyError

log = logging.getLogger("fshipper")

ROLE_HELP = {
    "producer": "Follow one log file (SHIPPER_FILE) and publish its lines to NATS.",
    "consumer": "Consume partitions from NATS and write one file per publishing host.",
}
EPILOG = """\
configuration: {dir}/fshipper.env, {dir}/{role}.env, {dir}/{role}-<instance>.env,
then the process environment (later ones win). `fshipper check-config --role {role}`
prints every setting with its source.

exit status: 0 stopped cleanly; 78 invalid configuration; 69 a library a setting
needs is missing; 1 any other failure before the daemon was ready.
signals: TERM/INT stop gracefully; HUP re-reads the configuration.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-dir", default=config.DEFAULT_CONFIG_DIR, metavar="DIR",
                        help="directory of the env files (default: %(default)s)")
    parser.add_argument("--instance", metavar="NAME", help="also read <role>-NAME.env (templated units)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")


def _daemon_parser(role: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"fshipper-{role}", description=ROLE_HELP[role],
        epilog=EPILOG.format(dir=config.DEFAULT_CONFIG_DIR, role=role),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--foreground", action="store_true",
                        help="stay attached to the terminal and log to stderr")
    parser.add_argument("--pidfile", metavar="PATH",
                        help=f"pidfile (default: /run/fshipper/{role}[-<instance>].pid; "
                             "in the foreground only if given)")
    parser.add_argument("--log-file", metavar="PATH", help="log to this file instead of syslog/stderr")
    _common(parser)
    return parser


def _load(role: str, args: argparse.Namespace, program: str) -> config.Loaded:
    from . import connection

    try:
        loaded = config.load(role, args.instance, args.config_dir)
        if role != "admin":
            config.require_dependencies(loaded.settings)
        connection.check_tls(loaded)
    except (ConfigError, DependencyError) as e:
        sys.stderr.write(f"{program}: {e}\n")
        sys.exit(e.exit_code)
    for warning in loaded.warnings:
        sys.stderr.write(f"{program}: warning: {warning}\n")
    return loaded


def daemon_main(role: str, argv: Optional[List[str]] = None) -> None:
    from . import daemon
    from .service import serve

    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop handles it: a reload, never a death
    args = _daemon_parser(role).parse_args(argv)
    program = f"fshipper-{role}"
    settings = _load(role, args, program).settings
    pidfile_path = args.pidfile or (None if args.foreground else f"/run/fshipper/{settings.name}.pid")
    readiness = daemon.Readiness(None) if args.foreground else daemon.daemonize(program)
    daemon.setup_logging(program, settings.shipper_log_level, args.foreground, args.log_file)
    pidfile = daemon.PidFile(pidfile_path) if pidfile_path else None
    code = 0
    try:
        if pidfile:
            pidfile.acquire()
        log.info("%s %s starting (pid %d)", program, __version__, os.getpid())
        asyncio.run(serve(settings, args.config_dir, readiness.ok))
        log.info("%s stopped", program)
    except daemon.DaemonError as e:
        log.error("%s", e)
        readiness.fail(str(e), e.exit_code)
        if args.foreground:
            sys.stderr.write(f"{program}: {e}\n")
        code = e.exit_code
    except Exception as e:  # the last word before exiting: say what happened
        log.exception("%s failed: %s", program, e)
        readiness.fail(f"{type(e).__name__}: {e}", 1)
        code = 1
    finally:
        if pidfile:
            pidfile.release()
    sys.exit(code)


def producer_main() -> None:
    daemon_main("producer")


def consumer_main() -> None:
    daemon_main("consumer")


# --- fshipper (admin) -----------------------------------------------------------------

def _check_config(args: argparse.Namespace) -> int:
    roles = [args.role] if args.role else [
        r for r in ("producer", "consumer") if os.path.exists(os.path.join(args.config_dir, f"{r}.env"))]
    if not roles:
        sys.stderr.write(f"fshipper: no producer.env or consumer.env in {args.config_dir}; "
                         "name one with --role\n")
        return EX_CONFIG
    for role in roles:
        loaded = _load(role, args, "fshipper")
        print(f"# {role}" + (f" instance {args.instance}" if args.instance else "")
              + ": configuration is valid")
        for line in config.describe(loaded):
            print(line)
    return 0


async def _admin_connect(settings: config.Settings):
    from . import connection

    try:
        return await asyncio.wait_for(connection.connect(settings), 15)
    except asyncio.TimeoutError:
        raise SystemExit(f"fshipper: no NATS server answered at {connection.servers(settings)}") from None


async def _setup(settings: config.Settings) -> int:
    from . import connection, streams

    nc = await _admin_connect(settings)
    try:
        try:
            streams.check_server(nc.connected_server_version, settings)
        except streams.ServerTooOldError as e:
            sys.stderr.write(f"fshipper: {e}\n")
            return config.EX_UNAVAILABLE
        for line in await streams.ensure(nc.jetstream(), settings, streams.setup_partitions(settings)):
            print(line)
    finally:
        await connection.close(nc)
    return 0


async def _status(settings: config.Settings) -> int:
    from nats.js.errors import NotFoundError

    from . import connection

    nc = await _admin_connect(settings)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(settings.stream)
        except NotFoundError:
            print(f"stream {settings.stream}: missing (run 'fshipper setup')")
            return 1
        s = info.state
        print(f"stream {settings.stream}: {s.messages} messages, {s.bytes} bytes, "
              f"sequences {s.first_seq}..{s.last_seq}, replicas {info.config.num_replicas}")
        for c in await js.consumers_info(settings.stream):
            print(f"consumer {c.name}: {c.num_pending} pending, {c.num_ack_pending} unacknowledged, "
                  f"{c.num_redelivered} redelivered")
    finally:
        await connection.close(nc)
    _local_status(settings.shipper_state_dir)
    return 0


def _local_status(state_dir: str) -> None:
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return
    for name in names:
        if name.endswith(".position"):
            try:
                with open(os.path.join(state_dir, name)) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            ref = data.get("file") or {}
            print(f"{name[:-9]}: file {ref.get('gen', '-')} ({ref.get('name', '-')}, inode {ref.get('ino', '-')}) "
                  f"confirmed up to byte {data.get('offset', 0)}")


def _permissions(args: argparse.Namespace) -> int:
    from . import permissions

    settings = _load("admin", args, "fshipper").settings
    if args.role == "producer":
        try:
            for flag, value, name in (("--host", args.host, "HOSTNAME"),
                                      ("--inbox-prefix", args.inbox_prefix, "NATS_INBOX_PREFIX")):
                if value is not None:
                    config.BY_NAME[name].convert(value)
        except ValueError as e:
            sys.stderr.write(f"fshipper: {flag} {value!r}: {e}\n")
            return EX_CONFIG
        allowed = permissions.producer(settings, args.host, args.inbox_prefix)
    else:
        allowed = permissions.consumer(settings)
    print(json.dumps(allowed, indent=2))
    return 0


def admin_main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="fshipper", description="fshipper administration")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate the configuration and print every setting")
    check.add_argument("--role", choices=("producer", "consumer"))
    _common(check)
    for name, text in (("setup", "create or update the stream and the partitions' consumers"),
                       ("status", "show the stream, its consumers and local positions")):
        _common(sub.add_parser(name, help=text))
    perms = sub.add_parser(
        "permissions", help="print the nats-server permissions of a producer or of the consumer (JSON)",
        description="Print the nats-server `permissions` object for one producer host or for the "
                    "consumer (which also covers `fshipper setup` and `status`). SHIPPER_SUBJECT, "
                    "SHIPPER_PARTITIONS, SHIPPER_STREAM and the consumer's NATS_INBOX_PREFIX come "
                    "from the same files as `fshipper setup` reads.")
    perms.add_argument("--role", choices=("producer", "consumer"), required=True)
    perms.add_argument("--host", help="the producer's HOSTNAME (required with --role producer)")
    perms.add_argument("--inbox-prefix", metavar="PREFIX",
                       help="the producer's NATS_INBOX_PREFIX, if it sets one (default: from --host)")
    _common(perms)
    sub.add_parser("version", help="print the version")
    args = parser.parse_args(argv)
    if args.command == "permissions" and args.role == "producer" and not args.host:
        perms.error("--role producer needs --host")
    if args.command == "version":
        print(f"fshipper {__version__}")
        sys.exit(0)
    if args.command == "check-config":
        sys.exit(_check_config(args))
    if args.command == "permissions":
        sys.exit(_permissions(args))
    if args.command in ("setup", "status"):
        settings = _load("admin", args, "fshipper").settings
        logging.basicConfig(level=logging.WARNING, format="fshipper: %(message)s")
        logging.getLogger("nats").setLevel(logging.CRITICAL)
        run = _setup if args.command == "setup" else _status
        sys.exit(asyncio.run(run(settings)))
    parser.print_help()
    sys.exit(2)
