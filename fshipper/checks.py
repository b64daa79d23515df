"""check-config's look at the running system: will the service user manage?

A configuration can be valid and still fail on the host it lands on: the
followed file unreadable for the service user, an output directory it cannot
write, a templated instance without its file, two producers publishing as the
same host. These checks read modes, owners and group lists; they never switch
users, so they also answer for a user other than the one running them (ACLs
and the units' sandboxing are not considered).

Each problem is one line. Errors make check-config exit 78; warnings do not:
a SHIPPER_FILE that does not exist yet in an existing directory is a warning,
as the producer waits for it (a log created by the first message of a new
service is common); a directory that is missing, or a file the user cannot
read, is an error, as no waiting fixes it.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from . import config, wire
from .config import ConfigError, Settings

SERVICE_USER = "fshipper"
R, W, X = 4, 2, 1


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    text: str


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gids: Tuple[int, ...]

    def describe(self) -> str:
        groups = ",".join(_group_name(g) for g in self.gids)
        return f"{self.name} (uid {self.uid}, groups {groups})"


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_user(name: Optional[str]) -> User:
    """`name`, else the service user if this host has it, else whoever runs this."""
    if name is None:
        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            entry = pwd.getpwuid(os.geteuid())
    else:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(f"--user {name}: no such user") from None
    gids = tuple(sorted(set(os.getgrouplist(entry.pw_name, entry.pw_gid))))
    return User(entry.pw_name, entry.pw_uid, gids)


def allowed(st: os.stat_result, user: User, want: int) -> bool:
    """Would `user` get `want` (R|W|X bits) on a file with this mode, as the kernel
    decides it: owner bits for the owner, else group bits for a group member, else
    the others' bits. Root reads and writes anything, and searches any directory."""
    if user.uid == 0:
        return not (want & X) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
    if st.st_uid == user.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid in user.gids:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def _why(path: str, st: os.stat_result, user: User, verb: str) -> str:
    return (f"{path}: {user.name} cannot {verb} it (mode {stat.S_IMODE(st.st_mode):04o}, "
            f"owner {_user_name(st.st_uid)}, group {_group_name(st.st_gid)}; "
            f"{user.name} is in {', '.join(_group_name(g) for g in user.gids)})")


def _unreachable(path: str, user: User) -> Optional[str]:
    """Why `user` cannot get to `path` (a directory on the way it cannot search), or None."""
    parts = os.path.normpath(path).split("/")
    for depth in range(1, len(parts)):
        directory = "/".join(parts[:depth]) or "/"
        try:
            st = os.stat(directory)
        except OSError:
            return None  # what does not exist is reported by the caller
        if not allowed(st, user, X):
            return _why(directory, st, user, "enter")
    return None


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_writable_directory(setting: str, path: str, user: User, problems: List[Problem]) -> None:
    """`path` (a directory the daemon creates if it is missing) can be written by `user`."""
    where = f"{setting}: {path}"
    blocked = _unreachable(path, user)
    if blocked:
        problems.append(Problem("error", f"{where}: {blocked}"))
        return
    if os.path.isdir(path):
        st = os.stat(path)
        if not allowed(st, user, W | X):
            problems.append(Problem("error", f"{setting}: {_why(path, st, user, 'write')}"))
        return
    if os.path.exists(path):
        problems.append(Problem("error", f"{where}: not a directory"))
        return
    parent = _existing_ancestor(path)
    st = os.stat(parent)
    if not os.path.isdir(parent) or not allowed(st, user, W | X):
        problems.append(Problem("error", f"{where}: does not exist, and {user.name} cannot create it: "
                                         f"{_why(parent, st, user, 'write')}"))


def check_followed_file(path: str, user: User, problems: List[Problem]) -> None:
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        problems.append(Problem("error", f"SHIPPER_FILE: {path}: the directory {directory} does not exist"))
        return
    blocked = _unreachable(path, user)
    if blocked:
        problems.append(Problem("error", f"SHIPPER_FILE: {path}: {blocked}"))
        return
    st = os.stat(directory)
    if not allowed(st, user, R):
        # Rotated files are found by listing the directory.
        problems.append(Problem("warning", f"SHIPPER_FILE: {_why(directory, st, user, 'list')}: "
                                           "rotated files cannot be found"))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        problems.append(Problem("warning", f"SHIPPER_FILE: {path}: does not exist yet; "
                                           "the producer waits for it"))
        return
    if not stat.S_ISREG(st.st_mode):
        problems.append(Problem("error", f"SHIPPER_FILE: {path}: not a regular file"))
    elif not allowed(st, user, R):
        problems.append(Problem("error", f"SHIPPER_FILE: {_why(path, st, user, 'read')}"))


def output_directory(settings: Settings) -> str:
    """Where the consumer creates files: SHIPPER_DIRECTORY, or the fixed part of
    SHIPPER_OUTPUT's directory (before any strftime field)."""
    if settings.shipper_directory:
        return settings.shipper_directory
    directory = os.path.dirname(settings.shipper_output or "/")
    fixed = directory.split("%", 1)[0]
    return os.path.normpath(fixed if fixed.endswith("/") or fixed == directory else os.path.dirname(fixed))


def producer_identities(config_dir: str, substitute: Optional[Dict[str, str]] = None
                        ) -> List[Tuple[str, str, Optional[str]]]:
    """(subject, env file, instance) of every producer configuration in `config_dir`:
    producer.env (fshipper-producer.service) and each producer-NAME.env, with a
    candidate in place of the file it replaces. Files that do not load are left
    out: they are reported when they are checked."""
    found = []
    for instance in config.instances(config_dir, "producer"):
        try:
            settings = config.load("producer", instance, config_dir, environ={}, substitute=substitute).settings
        except ConfigError:
            continue
        subject = wire.subject(settings.shipper_subject, settings.hostname or "", settings.shipper_partitions)
        found.append((subject, config.config_files(config_dir, "producer", instance)[-1], instance))
    return found


def check_collisions(settings: Settings, config_dir: str, problems: List[Problem],
                     substitute: Optional[Dict[str, str]] = None) -> None:
    """Two producers publishing as one host interleave their lines in one file and
    break each other's chains: each instance needs its own HOSTNAME or subject."""
    mine = wire.subject(settings.shipper_subject, settings.hostname or "", settings.shipper_partitions)
    own_file = config.config_files(config_dir, "producer", settings.instance)[-1]
    for subject, path, instance in producer_identities(config_dir, substitute):
        if instance != settings.instance and subject == mine:
            problems.append(Problem("error", (
                f"{own_file}: publishes as host {settings.hostname} on {subject}, as {path} does; "
                f"set its own HOSTNAME (or SHIPPER_SUBJECT) in {own_file}")))


def check_system(settings: Settings, config_dir: str, user: User,
                 substitute: Optional[Dict[str, str]] = None) -> List[Problem]:
    """The problems the service user would meet; `substitute` maps a layer's file
    to the candidate checked in its place."""
    problems: List[Problem] = []
    substitute = substitute or {}
    if settings.instance:
        path = config.config_files(config_dir, settings.role, settings.instance)[-1]
        if not os.path.exists(substitute.get(path, path)):
            problems.append(Problem("error", f"--instance {settings.instance}: {path} does not exist"))
    if settings.role == "producer":
        check_followed_file(settings.shipper_file or "", user, problems)
        check_collisions(settings, config_dir, problems, substitute)
    if settings.role == "consumer":
        check_writable_directory("SHIPPER_OUTPUT" if not settings.shipper_directory else "SHIPPER_DIRECTORY",
                                 output_directory(settings), user, problems)
    check_writable_directory("SHIPPER_STATE_DIR", settings.shipper_state_dir, user, problems)
    return problems
