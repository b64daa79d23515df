"""Configuration: layered env files plus the process environment, validated once.

Order (later wins): <dir>/fshipper.env, <dir>/<role>.env, <dir>/<role>-<instance>.env,
then the process environment. The result is a frozen `Settings`; the rest of the
code never reads os.environ.
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import unicodedata
from dataclasses import dataclass, fields
from typing import Callable, Dict, List, Mapping, Optional, Tuple
from urllib.parse import urlsplit

from . import wire

DEFAULT_CONFIG_DIR = "/etc/fshipper"
ROLES = ("producer", "consumer", "admin")
EX_CONFIG = 78
EX_UNAVAILABLE = 69


class ConfigError(Exception):
    """An invalid setting; str() is the one-line message for the operator."""

    exit_code = EX_CONFIG


class DependencyError(Exception):
    """A library a setting needs is missing (exit 69)."""

    exit_code = EX_UNAVAILABLE


# --- value converters: each raises ValueError with what was expected ----------

# Blanks are ASCII space and tab only: str.strip() and \s also take Unicode
# spaces and separators, which would vanish from what the operator sees.
_BLANKS = " \t"


def _text(value: str) -> str:
    if not value:
        raise ValueError("expected a non-empty value")
    return value


def redact_url(text: str) -> str:
    """NATS_URL as it may be printed: passwords and tokens replaced by ***.

    "nats://user:pass@host:4222" -> "nats://user:***@host:4222", "nats://token@host"
    -> "nats://***@host", for each of a comma-separated list. Everything between
    "://" and the last "@" of a URL counts as user information, so that a
    password holding a raw "/" or "@" (a broken URL, shown in its error) is
    hidden too.
    """
    redacted = []
    for url in text.split(","):
        scheme, sep, rest = url.partition("://")
        if not sep:  # "user:pass@host" is a URL too (nats:// is implied)
            scheme, rest = "", url
        userinfo, at, hostport = rest.rpartition("@")
        if at:
            user, colon, _ = userinfo.partition(":")
            rest = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
        redacted.append(f"{scheme}{sep}{rest}")
    return ",".join(redacted)


def _urls(value: str) -> Tuple[str, ...]:
    urls = tuple(u.strip(_BLANKS) for u in value.split(",") if u.strip(_BLANKS))
    if not urls:
        raise ValueError("expected one or more URLs like nats://host:4222, comma separated")
    for url in urls:
        parts = urlsplit(url if "://" in url else "nats://" + url)
        if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
            raise ValueError(f"{redact_url(url)!r} is not a NATS URL (expected nats://host:port)")
        # The port as written: older Pythons' urlsplit takes what int() takes.
        port = parts.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
        try:
            if port and not re.fullmatch(r"[0-9]{1,5}", port):
                raise ValueError
            parts.port  # 0 to 65535
        except ValueError:
            raise ValueError(f"{redact_url(url)!r} has an invalid port") from None
    return urls


def _subject(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", value):
        raise ValueError("expected a NATS subject without wildcards or spaces, like 'shipper' or 'logs.prod'")
    return value


def _host(value: str) -> str:
    if not wire.safe_host(value):  # the consumer's rule: it would refuse every line
        raise ValueError(f"expected {wire.HOST_RULE}")
    return value


# Numbers are ASCII digits and nothing else. int() and float() also take
# other scripts' digits ("٣"), "1_0", "+5" and surrounding spaces, and re's
# \d and IGNORECASE match non-ASCII digits and letters (the Kelvin sign is a
# "k"): a value the operator cannot read as the number it becomes is refused.
_DIGITS = re.compile(r"[0-9]{1,20}")  # 20 digits hold any 64-bit number


def _whole(minimum: int, maximum: Optional[int] = None) -> Callable[[str], int]:
    def convert(value: str) -> int:
        number = int(value) if _DIGITS.fullmatch(value) else None
        if number is None or number < minimum or (maximum is not None and number > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"expected a whole number {bound} (digits 0-9 only)")
        return number

    return convert


MAX_PARTITIONS = 1000


def _partitions(value: str) -> Tuple[int, ...]:
    items = [p.strip(_BLANKS) for p in value.split(",")]
    if not all(_DIGITS.fullmatch(p) for p in items if p):
        raise ValueError("expected partition numbers separated by commas, like 0,1,2")
    numbers = sorted({int(p) for p in items if p})
    if not numbers or numbers[-1] >= MAX_PARTITIONS:
        raise ValueError(f"expected partition numbers from 0 to {MAX_PARTITIONS - 1} "
                         "separated by commas, like 0,1,2")
    return tuple(numbers)


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("expected an absolute path")
    if "\0" in value:
        raise ValueError("a path cannot contain NUL")
    return os.path.normpath(value)


def _readable_file(value: str) -> str:
    path = _absolute_path(value)
    if not os.path.isfile(path):
        raise ValueError("no such file")
    if not os.access(path, os.R_OK):
        raise ValueError("file is not readable by this user")
    return path


def _listen(value: str) -> Tuple[str, int]:
    """host:port, or [v6-address]:port, for the metrics endpoint."""
    host, colon, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536 \
            or not re.fullmatch(r"[A-Za-z0-9_.:-]+", host):
        raise ValueError("expected host:port, like 127.0.0.1:9465 or [::1]:9465 (port 1-65535)")
    return host, int(port)


def _output(value: str) -> str:
    if "\0" in value or not value.strip():
        raise ValueError("expected a file name or path pattern")
    if "%" not in value:
        value += "-%Y%m%d%H%M"
    return value


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZES = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}
_DURATION = re.compile(r"([0-9]{1,20}(?:\.[0-9]{1,20})?)([smhd]?)", re.ASCII | re.IGNORECASE)
_SIZE = re.compile(r"([0-9]{1,20})([bkmgt]?)(?:i?b)?", re.ASCII | re.IGNORECASE)
MAX_SECONDS = 100 * 365 * 86400  # JetStream takes durations in nanoseconds, in 64 bits
MAX_BYTES = 2 ** 63 - 1


def _duration(value: str) -> float:
    match = _DURATION.fullmatch(value)
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else None
    if seconds is None or seconds > MAX_SECONDS:
        raise ValueError("expected a duration like 30s, 2m, 12h or 7d (digits 0-9, at most 36500d)")
    return seconds


def _size(value: str) -> int:
    if value == "-1":
        return -1
    match = _SIZE.fullmatch(value)
    size = int(match.group(1)) * _SIZES[match.group(2).lower()] if match else None
    if size is None or size > MAX_BYTES:
        raise ValueError("expected a size like 512K, 100M or 10G (digits 0-9), or -1 for no limit")
    return size


def _group(value: str) -> str:
    # Part of durable consumer names: a subject token that stays readable.
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value):
        raise ValueError("expected a name of 1 to 32 ASCII letters, digits, '_' or '-'")
    return value


MIN_FAILOVER, MAX_FAILOVER = 2.0, 3600.0


def _failover(value: str) -> float:
    seconds = _duration(value)
    if seconds and not MIN_FAILOVER <= seconds <= MAX_FAILOVER:
        raise ValueError(f"expected 0 (off) or a duration from {MIN_FAILOVER:.0f}s to 1h, like 5s")
    return seconds


def _choice(*choices: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if not value.isascii() or value.lower() not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value.lower()

    return convert


# --- the table of settings -----------------------------------------------------

P, C, A = "producer", "consumer", "admin"


@dataclass(frozen=True)
class Option:
    name: str
    roles: Tuple[str, ...]
    convert: Callable[[str], object]
    default: Optional[str]
    help: str
    required_for: Tuple[str, ...] = ()
    show: Callable[[str], str] = str  # the value as check-config and errors print it


OPTIONS: Tuple[Option, ...] = (
    Option("NATS_URL", (P, C, A), _urls, None, "NATS servers, comma separated", (P, C, A), redact_url),
    Option("NATS_CREDS", (P, C, A), _readable_file, None, "NATS 2.0 credentials file (needs PyNaCl)"),
    Option("NATS_CERTIFICATE", (P, C, A), _readable_file, None, "TLS client certificate (with NATS_KEY)"),
    Option("NATS_KEY", (P, C, A), _readable_file, None, "TLS client private key (with NATS_CERTIFICATE)"),
    Option("NATS_CA", (P, C, A), _readable_file, None, "CA chain to verify the servers"),
    Option("NATS_INBOX_PREFIX", (P, C, A), _subject, None,
           "subject prefix of this client's replies (default: _INBOX_host_<host> for a producer, "
           "_INBOX_consumer for the consumer and the admin commands)"),
    Option("SHIPPER_SUBJECT", (P, C, A), _subject, None, "subject prefix", (P, C, A)),
    Option("SHIPPER_MODE", (P, C, A), _choice("jetstream", "core"), "jetstream",
           "jetstream (persistent, exactly once) or core (plain NATS, at most once)"),
    Option("SHIPPER_FILE", (P,), _absolute_path, None, "the file to follow", (P,)),
    Option("HOSTNAME", (P,), _host, None, "identity of this host (default: the OS host name)"),
    Option("SHIPPER_PARTITIONS", (P, C, A), _whole(0, MAX_PARTITIONS), "0",
           "number of partitions; 0 = all in p0 (the same on every producer and consumer)"),
    Option("SHIPPER_PARTITIONS_BEFORE", (C,), _whole(0, MAX_PARTITIONS), None,
           "while SHIPPER_PARTITIONS is being changed: the old number; a host's lines are also "
           "accepted on its partition under it"),
    Option("SHIPPER_BATCH_BYTES", (P,), _size, "512K", "most bytes of lines in one message"),
    Option("SHIPPER_MAX_INFLIGHT", (P,), _whole(1, 10000), "4", "messages published and not yet acknowledged"),
    Option("SHIPPER_ROTATE_WAIT", (P,), _duration, "2s",
           "after a rotation, how long the old file must be quiet before switching (when the new one is still empty)"),
    Option("SHIPPER_OUTPUT", (C,), _output, None,
           "file to write, strftime pattern; '-%Y%m%d%H%M' appended when it has no '%'", (C,)),
    Option("SHIPPER_DIRECTORY", (C,), _absolute_path, None, "write <dir>/<host>/<SHIPPER_OUTPUT>; unset = one file"),
    Option("SHIPPER_READ_PARTITIONS", (C, A), _partitions, "0", "partitions this consumer serves, e.g. 0,1,2"),
    Option("SHIPPER_CONSUMER_GROUP", (C, A), _group, None,
           "name of this consumer group: each group gets every line once (its own durable consumers)"),
    Option("SHIPPER_FAILOVER_TIMEOUT", (C, A), _failover, "5s",
           "a partition's owner silent this long loses it to a standby (takeover within 1.5 times "
           "this plus 1s); 0 = off (one consumer per partition, nothing enforced)"),
    Option("SHIPPER_KEEP_DAYS", (C,), _whole(0), "7", "delete output files older than this many days; 0 = keep all"),
    Option("SHIPPER_FSYNC", (C,), _choice("batch", "off"), "batch",
           "batch: fsync output before each acknowledgement; off: leave it to the kernel"),
    Option("SHIPPER_FETCH_BATCH", (C,), _whole(1, 10000), "1000", "most messages one pull request brings (and at most 16 MiB)"),
    Option("SHIPPER_MAX_OPEN_FILES", (C,), _whole(1, 100000), "1024", "output files kept open (least recently used closed)"),
    Option("SHIPPER_MAX_HOSTS", (C,), _whole(1, 1000000), "10000",
           "hosts the consumer writes for at most; a new host beyond this is refused (an ERROR, counted)"),
    Option("SHIPPER_GAP_TIMEOUT", (C,), _duration, "5m",
           "how long to hold a host's lines that arrive ahead of a missing message before writing them anyway"),
    Option("SHIPPER_STREAM", (P, C, A), _subject, None, "stream name (default: from the subject, upper case)"),
    Option("SHIPPER_STREAM_REPLICAS", (C, A), _whole(1, 5), "1", "stream replicas (3 on a cluster)"),
    Option("SHIPPER_STREAM_MAX_AGE", (C, A), _duration, "7d", "drop stream messages older than this; 0 = never"),
    Option("SHIPPER_STREAM_MAX_BYTES", (C, A), _size, "-1", "stream size limit (oldest dropped); -1 = none"),
    Option("SHIPPER_STREAM_DUPLICATE_WINDOW", (C, A), _duration, "2m", "window for de-duplication by Nats-Msg-Id"),
    Option("SHIPPER_STATE_DIR", (P, C), _absolute_path, "/var/lib/fshipper", "where positions are kept"),
    Option("SHIPPER_LOG_LEVEL", (P, C, A), _choice("debug", "info", "warning", "error"), "info", "log level"),
    Option("SHIPPER_METRICS_LISTEN", (P, C), _listen, None,
           "serve Prometheus metrics at http://host:port/metrics; unset = off "
           "(each daemon and instance needs its own port)"),
)
BY_NAME: Dict[str, Option] = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Settings:
    role: str
    instance: Optional[str]
    nats_url: Tuple[str, ...]
    nats_creds: Optional[str]
    nats_certificate: Optional[str]
    nats_key: Optional[str]
    nats_ca: Optional[str]
    nats_inbox_prefix: Optional[str]
    shipper_subject: str
    shipper_mode: str
    shipper_file: Optional[str]
    hostname: Optional[str]
    shipper_partitions: int
    shipper_partitions_before: Optional[int]
    shipper_batch_bytes: int
    shipper_max_inflight: int
    shipper_rotate_wait: float
    shipper_output: Optional[str]
    shipper_directory: Optional[str]
    shipper_read_partitions: Tuple[int, ...]
    shipper_consumer_group: Optional[str]
    shipper_failover_timeout: float
    shipper_keep_days: int
    shipper_fsync: str
    shipper_fetch_batch: int
    shipper_max_open_files: int
    shipper_max_hosts: int
    shipper_gap_timeout: float
    shipper_stream: Optional[str]
    shipper_stream_replicas: int
    shipper_stream_max_age: float
    shipper_stream_max_bytes: int
    shipper_stream_duplicate_window: float
    shipper_state_dir: str
    shipper_log_level: str
    shipper_metrics_listen: Optional[Tuple[str, int]]

    @property
    def stream(self) -> str:
        return self.shipper_stream or stream_name(self.shipper_subject)

    @property
    def inbox_prefix(self) -> str:
        """Where this client receives replies; per host by default, so that a host's
        permissions can allow its own replies and nobody else's."""
        if self.nats_inbox_prefix:
            return self.nats_inbox_prefix
        return wire.inbox_prefix(self.hostname if self.role == "producer" else None)

    @property
    def tls_required(self) -> bool:
        """tls:// (or wss://) in NATS_URL, or a CA or client certificate: then nothing
        may be sent on a connection that is not TLS."""
        return bool(self.nats_ca or self.nats_certificate) or any(_scheme(u) in ("tls", "wss") for u in self.nats_url)

    @property
    def name(self) -> str:
        """`producer` or `producer-<instance>`: names the pidfile and state file."""
        return f"{self.role}-{self.instance}" if self.instance else self.role


def _scheme(url: str) -> str:
    return urlsplit(url if "://" in url else "nats://" + url).scheme


def stream_name(subject: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", subject).upper()


@dataclass(frozen=True)
class Loaded:
    settings: Settings
    sources: Dict[str, str]  # setting name -> "file:line", "environment" or "default"
    warnings: List[str]
    texts: Dict[str, Optional[str]]  # setting name -> the value as written


_LINE = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def parse_env_file(path: str) -> List[Tuple[int, str, str]]:
    """Read KEY=VALUE lines (systemd EnvironmentFile subset); returns (line, key, value).

    Lines end at "\n" only; a "\r" before it is dropped (files edited on
    Windows). str.splitlines() would also end a line at U+2028, U+2029, NEL,
    form feed, vertical tab or a lone "\r": "SHIPPER_FILE=/a<U+2028>NATS_URL=..."
    would then set NATS_URL, though the file has one line for `grep` or a
    review. Such characters stay inside their line: in a value they are
    refused (`control_character`); in a comment only a lone "\r" is, as
    systemd ends a line there even in a comment: a file we accept reads the
    same to systemd.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid UTF-8") from None
    entries = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.endswith("\r"):
            line = line[:-1]
        stripped = line.strip(_BLANKS)
        if stripped.startswith(("#", ";")) and "\r" in stripped:
            raise ConfigError(f"{path}:{number}: a carriage return inside a comment "
                              "(systemd would read what follows it as a setting)")
        if not stripped or stripped.startswith(("#", ";")):
            continue
        match = _LINE.fullmatch(stripped)
        if not match:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {stripped[:60]!r}")
        key, value = match.group(1), match.group(2).strip(_BLANKS)
        bad = control_character(value)
        if bad:
            raise ConfigError(f"{path}:{number}: {key}: {bad}")
        if value[:1] in ("'", '"'):
            quote = value[0]
            if len(value) < 2 or not value.endswith(quote):
                raise ConfigError(f"{path}:{number}: {key}: unterminated {quote} quote")
            value = value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        entries.append((number, key, value))
    return entries


def control_character(value: str) -> Optional[str]:
    """Why `value` cannot be a setting, or None: the first control character.

    Control characters (C0 with tab, DEL, C1 with NEL) and the Unicode line and
    paragraph separators end lines for other readers or hide text on a
    terminal: a value holding one is not what the operator reads.
    """
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            name = unicodedata.name(char, "")
            return (f"the value holds the control character U+{ord(char):04X}{' ' + name if name else ''}: "
                    "expected one line of printable text")
    return None


LAYERS = ("fshipper", "role", "instance")


def config_files(config_dir: str, role: str, instance: Optional[str]) -> List[str]:
    return list(layer_files(config_dir, role, instance).values())


def layer_files(config_dir: str, role: str, instance: Optional[str]) -> Dict[str, str]:
    """The env files read, by layer (see LAYERS), in the order they are read."""
    file_role = "consumer" if role == "admin" else role
    layers = {"fshipper": "fshipper.env", "role": f"{file_role}.env"}
    if instance:
        layers["instance"] = f"{file_role}-{instance}.env"
    return {layer: os.path.join(config_dir, name) for layer, name in layers.items()}


def instances(config_dir: str, role: str) -> List[Optional[str]]:
    """The configurations of `role` in `config_dir`: None for <role>.env (the plain
    unit) if it exists, then NAME for each <role>-NAME.env (templated units)."""
    try:
        names = sorted(os.listdir(config_dir))
    except OSError:
        return []
    found: List[Optional[str]] = [None] if f"{role}.env" in names else []
    prefix = f"{role}-"
    return found + [n[len(prefix):-4] for n in names
                    if n.startswith(prefix) and n.endswith(".env") and len(n) > len(prefix) + 4]


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(BY_NAME), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def load(
    role: str,
    instance: Optional[str] = None,
    config_dir: str = DEFAULT_CONFIG_DIR,
    environ: Optional[Mapping[str, str]] = None,
    substitute: Optional[Mapping[str, str]] = None,
    strict: bool = False,
) -> Loaded:
    """Read the layers and the environment into Settings (ConfigError if invalid).

    `substitute` maps a layer's file to another read in its place (a candidate
    that config management is about to install); `strict` makes an unknown key
    or a key set twice in one file an error instead of a warning.
    """
    if role not in ROLES:
        raise ValueError(role)
    if instance is not None and not re.fullmatch(r"[A-Za-z0-9_.@:-]+", instance):
        raise ConfigError(f"--instance {instance!r}: expected letters, digits and . _ - @ :")
    environ = os.environ if environ is None else environ
    raw: Dict[str, Tuple[str, str]] = {}  # name -> (value, source)
    warnings: List[str] = []
    substitute = substitute or {}

    def doubtful(message: str) -> None:
        if strict:
            raise ConfigError(f"{message} (--strict)")
        warnings.append(message)

    for path in config_files(config_dir, role, instance):
        path = substitute.get(path, path)
        if not os.path.exists(path):
            continue
        first_line: Dict[str, int] = {}
        for number, key, value in parse_env_file(path):
            where = f"{path}:{number}"
            if key not in BY_NAME:
                doubtful(f"{where}: unknown setting {key}{_suggest(key)}")
                continue
            if key in first_line:
                doubtful(f"{where}: {key} is set again (first on line {first_line[key]}); the last one counts")
            first_line.setdefault(key, number)
            raw[key] = (value, where)
    for key, value in environ.items():
        if key in BY_NAME:
            raw[key] = (value, "environment")
        elif key.startswith(("SHIPPER_", "NATS_")):
            doubtful(f"environment: unknown setting {key}{_suggest(key)}")

    values: Dict[str, object] = {}
    sources: Dict[str, str] = {}
    texts: Dict[str, Optional[str]] = {}
    for option in OPTIONS:
        value, source = raw.get(option.name, (None, "default"))
        bad = control_character(value) if value else None  # files are checked as they are read
        if bad:
            raise ConfigError(f"{source}: {option.name}: {bad}")
        if value == "" and option.name in raw:
            value = None  # KEY= (empty) means unset, as in a shell
        if value is None:
            if role in option.required_for:
                raise ConfigError(
                    f"{option.name} is not set: required for the {role} "
                    f"(set it in {config_files(config_dir, role, instance)[1]})"
                )
            value, source = option.default, "default"
        if value is None:
            values[option.name.lower()] = None
        else:
            try:
                values[option.name.lower()] = option.convert(value)
            except ValueError as e:
                # ascii(): a look-alike letter or an invisible character shows as its code
                raise ConfigError(f"{source}: {option.name}={ascii(option.show(value))}: {e}") from None
        sources[option.name] = source
        texts[option.name] = value

    if bool(values["nats_certificate"]) != bool(values["nats_key"]):
        have, missing = ("NATS_CERTIFICATE", "NATS_KEY") if values["nats_certificate"] else ("NATS_KEY", "NATS_CERTIFICATE")
        raise ConfigError(f"{sources[have]}: {have} is set but {missing} is not: TLS needs both")
    if role == "producer" and values["hostname"] is None:
        os_name = socket.gethostname()
        try:
            values["hostname"] = texts["HOSTNAME"] = _host(os_name)
        except ValueError as e:
            raise ConfigError(f"HOSTNAME is not set and the OS host name {ascii(os_name)} cannot be used: {e} "
                              f"(set HOSTNAME in {config_files(config_dir, role, instance)[1]})") from None
        sources["HOSTNAME"] = "the OS host name"
    output = values["shipper_output"]
    if role == "consumer" and isinstance(output, str):
        where = f"{sources['SHIPPER_OUTPUT']}: SHIPPER_OUTPUT={output!r}"
        if values["shipper_directory"]:
            if output.startswith("/") or ".." in output.split("/"):
                raise ConfigError(f"{where}: with SHIPPER_DIRECTORY, expected a relative file name without '..'")
        elif not output.startswith("/"):
            raise ConfigError(f"{where}: expected an absolute path (or set SHIPPER_DIRECTORY)")
    if role in ("consumer", "admin"):
        _check_partitions(values, sources)
    settings = Settings(role=role, instance=instance, **values)  # type: ignore[arg-type]
    plain = [u for u in settings.nats_url if _scheme(u) == "ws"]
    if plain and settings.tls_required:
        raise ConfigError(f"{sources['NATS_URL']}: NATS_URL={plain[0]!r}: a ws:// connection is never TLS, "
                          "and TLS is asked for (tls://, wss://, NATS_CA or NATS_CERTIFICATE): use wss://")
    return Loaded(settings, sources, warnings, texts)


def _check_partitions(values: Dict[str, object], sources: Dict[str, str]) -> None:
    """A consumer refuses a host on a partition the host does not belong to; so
    reading a partition no host can be on is a configuration error (most likely
    SHIPPER_PARTITIONS set for the producers only), not a reason to refuse lines."""
    counts = [values["shipper_partitions"]]
    if values["shipper_partitions_before"] is not None:
        counts.append(values["shipper_partitions_before"])
    usable = max(max(1, int(n)) for n in counts)  # type: ignore[call-overload]
    beyond = [n for n in values["shipper_read_partitions"] if n >= usable]  # type: ignore[attr-defined]
    if beyond:
        raise ConfigError(
            f"{sources['SHIPPER_READ_PARTITIONS']}: SHIPPER_READ_PARTITIONS has partition {beyond[0]}, "
            f"but SHIPPER_PARTITIONS={values['shipper_partitions']} ({sources['SHIPPER_PARTITIONS']}) "
            f"puts no host there: set SHIPPER_PARTITIONS for producers and consumers alike (fshipper.env)")


def require_dependencies(settings: Settings) -> None:
    """NATS_CREDS signs with ed25519 through PyNaCl; say which package brings it."""
    if settings.shipper_metrics_listen:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise DependencyError(
                "SHIPPER_METRICS_LISTEN is set but prometheus_client is missing: install "
                "python3-prometheus-client or 'pip install prometheus-client'") from None
    if settings.nats_creds:
        try:
            import nacl.signing  # noqa: F401
        except ImportError:
            raise DependencyError(
                "NATS_CREDS is set but PyNaCl is missing: install python3-nacl "
                "(Debian/Ubuntu), python3-pynacl (RHEL/Fedora) or 'pip install pynacl'"
            ) from None


def describe(loaded: Loaded) -> List[str]:
    """Lines for check-config: every setting of the role with its value and source."""
    settings = loaded.settings
    lines = []
    for option in OPTIONS:
        if settings.role not in option.roles:
            continue
        value = loaded.texts[option.name]
        shown = "(unset)" if value is None else option.show(value)
        if option.name == "SHIPPER_STREAM" and value is None:
            shown = f"{settings.stream} (derived from SHIPPER_SUBJECT)"
        if option.name == "NATS_INBOX_PREFIX" and value is None:
            shown = f"{settings.inbox_prefix} (derived from " + (
                "HOSTNAME)" if settings.role == "producer" else "the role)")
        lines.append(f"{option.name}={shown}  # {loaded.sources[option.name]}")
    return lines


assert {f.name for f in fields(Settings)} == {"role", "instance"} | {o.name.lower() for o in OPTIONS}
