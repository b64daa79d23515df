"""Command lines: fshipper-producer, fshipper-consumer and the fshipper admin tool."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from typing import List, Optional

from . import __version__, config
from .checks import SERVICE_USER
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
        if pidfile:
            pidfile.release()  # before the parent returns: nothing of this run is left behind then
        readiness.fail(str(e), e.exit_code)
        if args.foreground:
            sys.stderr.write(f"{program}: {e}\n")
        code = e.exit_code
    except Exception as e:  # the last word before exiting: say what happened
        log.exception("%s failed: %s", program, e)
        if pidfile:
            pidfile.release()
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
    """Validate the layers (one of them possibly a candidate file), then the system
    for the service user. Problems are one line each on stderr; 78 if any is an
    error."""
    from . import checks, connection

    if args.candidate and not args.layer:
        sys.stderr.write("fshipper: --candidate needs --layer fshipper|role|instance\n")
        return EX_CONFIG
    if args.layer == "instance" and not args.instance:
        sys.stderr.write("fshipper: --layer instance needs --instance NAME\n")
        return EX_CONFIG
    if args.candidate and not os.path.isfile(args.candidate):
        sys.stderr.write(f"fshipper: --candidate {args.candidate}: no such file\n")
        return EX_CONFIG
    roles = [args.role] if args.role else [
        r for r in ("producer", "consumer") if os.path.exists(os.path.join(args.config_dir, f"{r}.env"))]
    if not roles:
        sys.stderr.write(f"fshipper: no producer.env or consumer.env in {args.config_dir}; "
                         "name one with --role\n")
        return EX_CONFIG
    # A candidate is checked as the service will read it: the environment of
    # whoever runs the check (Ansible, a shell) is not the service's.
    environ = {} if args.no_environ or (args.candidate and not args.environ) else None
    try:
        user = checks.resolve_user(args.user)
    except ConfigError as e:
        sys.stderr.write(f"fshipper: {e}\n")
        return e.exit_code
    code = 0
    for role in roles:
        substitute = {}
        if args.candidate:
            substitute[config.layer_files(args.config_dir, role, args.instance)[args.layer]] = args.candidate
        try:
            loaded = config.load(role, args.instance, args.config_dir, environ, substitute, args.strict)
            config.require_dependencies(loaded.settings)
            connection.check_tls(loaded)
        except (ConfigError, DependencyError) as e:
            sys.stderr.write(f"fshipper: {e}\n")
            return e.exit_code
        for warning in loaded.warnings:
            sys.stderr.write(f"fshipper: warning: {warning}\n")
        problems = checks.check_system(loaded.settings, args.config_dir, user, substitute)
        for problem in problems:
            sys.stderr.write(f"fshipper: {problem.level}: {problem.text}\n")
        errors = sum(p.level == "error" for p in problems)
        if errors:
            code = EX_CONFIG
        if args.quiet:
            continue
        what = f"# {role}" + (f" instance {args.instance}" if args.instance else "")
        checked = f"system checked for user {user.describe()}"
        print(f"{what}: configuration is valid; {checked}: "
              + (f"{errors} error(s), {len(problems) - errors} warning(s)" if problems else "no problems"))
        for line in config.describe(loaded):
            print(line)
    return code


PROGRESS_EVERY = 3.0  # seconds between "still waiting" lines while no server answers


async def _admin_connect(settings: config.Settings, timeout: float):
    """Connect for setup/status; a line on stderr every few seconds while no server
    answers, so an operator sees what it waits for; None after `timeout`."""
    from . import connection

    waiting = asyncio.ensure_future(connection.connect(settings))
    started = asyncio.get_running_loop().time()
    while True:
        elapsed = asyncio.get_running_loop().time() - started
        done, _ = await asyncio.wait({waiting}, timeout=min(PROGRESS_EVERY, timeout - elapsed))
        if done:
            return waiting.result()
        elapsed = asyncio.get_running_loop().time() - started
        if elapsed >= timeout:
            waiting.cancel()
            sys.stderr.write(f"fshipper: no NATS server answered at {connection.servers(settings)} "
                             f"within {timeout:.0f}s\n")
            return None
        sys.stderr.write(f"fshipper: waiting for a NATS server at {connection.servers(settings)} "
                         f"({elapsed:.0f}s of {timeout:.0f}s)\n")
        sys.stderr.flush()


async def _setup(settings: config.Settings, args: argparse.Namespace) -> int:
    import nats.errors
    from nats.js.errors import APIError

    from . import connection, streams

    nc = await _admin_connect(settings, args.timeout)
    if nc is None:
        return 1
    try:
        try:
            streams.check_server(nc.connected_server_version, settings)
        except streams.ServerTooOldError as e:
            sys.stderr.write(f"fshipper: {e}\n")
            return config.EX_UNAVAILABLE
        js, partitions = nc.jetstream(), streams.setup_partitions(settings)
        if args.dry_run:
            steps = await streams.plan(js, settings, partitions, args.force)
            for step in steps:
                print(step.line(dry=True))
            # A conflict: the real run would refuse.
            return EX_CONFIG if any(step.action == "conflict" for step in steps) else 0
        for line in await streams.ensure(js, settings, partitions, force=args.force):
            print(line)
    except streams.ConflictError as e:
        for line in e.lines:
            sys.stderr.write(f"fshipper: {line}\n")
        return EX_CONFIG
    except APIError as e:
        sys.stderr.write(f"fshipper: {streams.api_error(f'stream {settings.stream}', e)}\n")
        return 1
    except (nats.errors.Error, asyncio.TimeoutError) as e:
        sys.stderr.write(f"fshipper: stream {settings.stream}: {str(e) or type(e).__name__}\n")
        return 1
    finally:
        await connection.close(nc)
    return 0


async def _status(settings: config.Settings, args: argparse.Namespace) -> int:
    """Lines from the server (stream, partitions) and from this host's state
    (producers), each with a verdict; the exit status is the worst of them."""
    from . import connection, health

    now = time.time()
    lines = []
    nc = None if args.local else await _admin_connect(settings, args.timeout)
    if nc is None and not args.local:
        lines.append(health.Line("nats", connection.servers(settings), health.CRITICAL,
                                 f"no server answered within {args.timeout:.0f}s"))
    elif nc is not None:
        try:
            lines += await health.server_lines(nc.jetstream(), settings, args.config_dir, now)
        finally:
            await connection.close(nc)
    lines += health.producer_lines(args.config_dir, now, args.warning, args.critical)
    verdict = health.worst(lines)
    if args.json:
        print(json.dumps({"verdict": verdict, "exit": health.EXIT[verdict],
                          "lines": [line.as_dict() for line in lines]}, indent=1, sort_keys=True))
    else:
        for text in health.render(lines):
            print(text)
    return health.EXIT[verdict]


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


def _admin_run(run, settings: config.Settings, args: argparse.Namespace) -> int:
    """A NATS API error (permissions, a limit, a cluster without a leader) is one
    line naming what failed, never a traceback."""
    import nats.errors
    import nats.js.errors

    try:
        return asyncio.run(run(settings, args))
    except nats.js.errors.APIError as e:
        text = f"the server answered {e.code} (err_code {e.err_code}): {e.description}"
    except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
        text = f"{type(e).__name__}: {str(e) or 'no details'}"
    sys.stderr.write(f"fshipper: {args.command}: {_one_line(text)}\n")
    return 2 if args.command == "status" else 1


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no details"


def admin_main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="fshipper", description="fshipper administration")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = sub.add_parser("check-config", help="validate the configuration and print every setting")
    check.add_argument("--role", choices=("producer", "consumer"))
    check.add_argument("--candidate", metavar="FILE",
                       help="check FILE in place of one layer's file (e.g. Ansible's validate: %%s)")
    check.add_argument("--layer", choices=config.LAYERS,
                       help="the layer --candidate replaces: fshipper.env, <role>.env or <role>-<instance>.env")
    check.add_argument("--strict", action="store_true",
                       help="an unknown key, or a key set twice in one file, is an error (78)")
    check.add_argument("--no-environ", action="store_true",
                       help="ignore the process environment (the default with --candidate)")
    check.add_argument("--environ", action="store_true", help="with --candidate: read the environment too")
    check.add_argument("--quiet", action="store_true", help="print problems only")
    check.add_argument("--user", metavar="NAME",
                       help=f"check the system for this user (default: {SERVICE_USER} if it exists, else you)")
    _common(check)
    setup = sub.add_parser(
        "setup", help="create or update the stream and the partitions' consumers",
        description="Create or update the stream and the partitions' consumers. Only what fshipper "
                    "created (metadata fshipper=1) is changed, and only to looser limits; anything else "
                    "is a conflict: one line each on stderr, nothing changed, exit 78.")
    setup.add_argument("--force", action="store_true",
                       help="take over a conflicting stream or consumer and apply the configuration")
    setup.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    status = sub.add_parser(
        "status", help="lag and health of the producers on this host and of the partitions; "
                       "exit 0 ok, 1 warning, 2 critical",
        description="One line per producer instance (from its state on this host) and per partition "
                    "(from the server), each with a verdict; the first line sums them up. Exit status "
                    "as a Nagios plugin: 0 ok, 1 warning, 2 critical.")
    status.add_argument("--json", action="store_true", help="print JSON for machines")
    status.add_argument("--local", action="store_true",
                        help="only the producers on this host: do not ask the server (producer hosts)")
    status.add_argument("--warning", type=float, default=60.0, metavar="SECONDS",
                        help="a producer with unconfirmed bytes or a problem this long is a warning "
                             "(default: %(default)s)")
    status.add_argument("--critical", type=float, default=300.0, metavar="SECONDS",
                        help="... and critical this long (default: %(default)s)")
    for waits in (setup, status):
        waits.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                            help="how long to wait for a NATS server (default: %(default)s)")
        _common(waits)
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
        sys.exit(_admin_run(run, settings, args))
    parser.print_help()
    sys.exit(2)
