"""Fixtures for the package tests: packages built once per session from the
working tree (the .rpm signed with a throwaway key), a newer build for the
upgrade test, and a nats-server with JetStream on a free loopback port."""
from __future__ import annotations

import re
import shutil

import pytest

from harness import NatsServer, need_program
from pkgbuild import SKIPPED_BANNER, SOURCE, SUMMARY, Build, build, signing_key


@pytest.fixture(scope="session")
def packages(tmp_path_factory) -> Build:
    for program, package in (("gpg", "gnupg"), ("rpmsign", "rpm")):
        need_program(program, package)
    base = tmp_path_factory.mktemp("packages")
    key, public = signing_key(base)
    return build(SOURCE, base / "dist", key, public)


@pytest.fixture(scope="session")
def newer_packages(tmp_path_factory, packages) -> Build:
    """The same tree as a later release: version + ".1", with its changelog
    entry and every sample env file changed."""
    base = tmp_path_factory.mktemp("newer")
    tree = base / "src"
    shutil.copytree(SOURCE, tree, ignore=shutil.ignore_patterns(
        ".git", ".venv", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    init = tree / "fshipper/__init__.py"
    newer = packages.version + ".1"
    init.write_text(re.sub(r'^__version__ = "[^"]+"', f'__version__ = "{newer}"',
                           init.read_text(), flags=re.M))
    changelog = tree / "packaging/debian/changelog"
    changelog.write_text(
        f"fshipper ({newer}) unstable; urgency=medium\n\n  * Upgrade test build.\n\n"
        f" -- fshipper developers <fshipper@example.org>  Sat, 28 Nov 2026 06:00:00 +0000\n\n"
        + changelog.read_text()
    )
    # Changed samples: were they conffiles, with the administrator's edits
    # each would be a question from dpkg.
    for name in ("fshipper", "producer", "consumer"):
        with open(tree / f"etc/fshipper/{name}.env", "a") as sample:
            sample.write("# (changed in the newer build)\n")
    key, public = signing_key(base)
    result = build(tree, base / "dist", key, public)
    assert result.version == newer
    return result


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("jetstream") / "store").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Modules whose tests are steps (class Steps) learn which step failed."""
    outcome = yield
    report = outcome.get_result()
    steps = getattr(item.module, "Steps", None)
    if steps is not None and report.failed and not steps.failed:
        steps.failed = item.name


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("package tests")
        for line in SUMMARY:
            terminalreporter.write_line(line)
    if SKIPPED_BANNER:
        terminalreporter.section("PACKAGE SYSTEM TESTS SKIPPED", sep="!", red=True, bold=True)
        for line in SKIPPED_BANNER:
            terminalreporter.write_line(line, red=True, bold=True)
