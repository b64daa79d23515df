"""Rotation scenarios against the real follower: real files, real inotify.

One table of scenarios; each writer script runs while the follower reads, and
the bytes the follower hands out (framed as the consumer writes them) must be
exactly the lines written, in order.
"""

import asyncio
import os
import shutil
import time

import pytest

from fshipper import wire
from fshipper.follower import Follower

ROTATE_WAIT = 0.5


class Log:
    """A writer that behaves like a logger: appends lines, reopens when told."""

    def __init__(self, path):
        self.path = path
        self.n = 0
        self.written = bytearray()
        self.implied = []   # where a line without newline ends when its file is done
        self.f = None

    def open(self):
        self.f = open(self.path, "ab", buffering=0)

    def lines(self, count, complete=True):
        data = b"".join(b"line %06d\n" % (self.n + i) for i in range(count))
        self.n += count
        if not complete:
            data = data[:-1]
        self.f.write(data)
        self.written += data

    def reopen(self):
        self.f.close()
        self.open()

    def create_and_reopen(self):
        """logrotate's `create`: a new empty file under the name; the logger reopens."""
        open(self.path, "wb").close()
        self.reopen()


def rename_create(log, d):
    log.lines(500)
    os.rename(log.path, d / "app.log.1")
    log.lines(50)            # still going to the old file until the logger reopens
    log.create_and_reopen()
    log.lines(500)


def rename_create_twice_quickly(log, d):
    log.lines(300)
    os.rename(log.path, d / "app.log.1")
    log.create_and_reopen()
    log.lines(300)
    os.rename(d / "app.log.1", d / "app.log.2")
    os.rename(log.path, d / "app.log.1")
    log.create_and_reopen()
    log.lines(300)


def rename_then_late_create(log, d):
    log.lines(200)
    os.rename(log.path, d / "app.log.1")
    log.lines(20)
    time.sleep(ROTATE_WAIT * 3)   # no new file for a while: keep reading the old one
    log.lines(20)
    log.f.close()
    log.open()
    log.lines(200)


def copytruncate(log, d):
    log.lines(400)
    time.sleep(0.3)          # the follower has read everything (copytruncate's window is documented)
    shutil.copyfile(log.path, d / "app.log.1")
    os.truncate(log.path, 0)
    log.lines(400)


def copytruncate_regrown_past_position(log, d):
    log.lines(100)
    time.sleep(0.3)
    os.truncate(log.path, 0)
    log.lines(300)           # longer than before: size alone would not show the truncation


def delete_recreate(log, d):
    log.lines(300)
    time.sleep(0.3)
    os.unlink(log.path)
    log.reopen()             # O_APPEND|O_CREAT: a new file under the name
    log.lines(300)


def file_appears_late(log, d):
    time.sleep(0.5)
    log.open()
    log.lines(300)


def incomplete_last_line_rotated_away(log, d):
    log.lines(100)
    log.lines(1, complete=False)
    log.implied.append(len(log.written))
    os.rename(log.path, d / "app.log.1")
    log.create_and_reopen()
    log.lines(100)


def long_unterminated_last_line_rotated_away(log, d):
    log.lines(10)
    data = b"y" * (4096 * 3)   # exactly three reads long, no newline
    log.f.write(data)
    log.written += data
    log.implied.append(len(log.written))
    os.rename(log.path, d / "app.log.1")
    log.create_and_reopen()
    log.lines(10)


SCENARIOS = {
    "rename+create": rename_create,
    "rename+create twice before switching": rename_create_twice_quickly,
    "rename, name comes back late": rename_then_late_create,
    "copytruncate": copytruncate,
    "copytruncate regrown past position": copytruncate_regrown_past_position,
    "delete+recreate": delete_recreate,
    "file appearing late": file_appears_late,
    "incomplete last line rotated away": incomplete_last_line_rotated_away,
    "long unterminated last line rotated away": long_unterminated_last_line_rotated_away,
}


async def follow(follower, until, timeout=20.0):
    out = bytearray()
    deadline = time.monotonic() + timeout
    while not until(out) and time.monotonic() < deadline:
        chunk = follower.read(4096)
        if chunk is None:
            await follower.wait(0.2)
            continue
        out += wire.unframe(chunk.payload, chunk.more)
    return bytes(out)


def expected(log) -> bytes:
    """What was written, with the newline a finished file's last line is given."""
    want = bytes(log.written)
    for at in reversed(log.implied):
        want = want[:at] + b"\n" + want[at:]
    return want


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_rotation_scenario(tmp_path, name):
    log = Log(tmp_path / "app.log")
    if name != "file appearing late":
        log.open()

    async def main():
        follower = Follower(str(log.path), ROTATE_WAIT)
        follower.start(asyncio.get_running_loop())
        writer = asyncio.get_running_loop().run_in_executor(None, SCENARIOS[name], log, tmp_path)
        out = bytearray()
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline:   # read while the writer writes
                chunk = follower.read(4096)
                if chunk is not None:
                    out += wire.unframe(chunk.payload, chunk.more)
                    continue
                if writer.done() and len(out) >= len(expected(log)):
                    break
                await follower.wait(0.1)
            await writer
        finally:
            follower.close()
        return bytes(out), expected(log)

    got, want = asyncio.run(main())
    assert got == want, f"{name}: got {len(got)} bytes, want {len(want)}"


def test_restart_finishes_files_rotated_three_times_while_stopped(tmp_path):
    log = Log(tmp_path / "app.log")
    log.open()
    log.lines(1000)

    async def first_run():
        follower = Follower(str(log.path), ROTATE_WAIT)
        follower.start(asyncio.get_running_loop())
        chunk = follower.read(5000)   # read part of the file, as if confirmed up to there
        follower.close()
        return chunk.ref, chunk.end, chunk

    ref, offset, chunk = asyncio.run(first_run())
    shipped = wire.unframe(chunk.payload, chunk.more)
    for _ in range(3):   # three rotations while stopped, growing each time
        log.lines(200)
        for k in (2, 1):
            if (tmp_path / f"app.log.{k}").exists():
                os.rename(tmp_path / f"app.log.{k}", tmp_path / f"app.log.{k + 1}")
        os.rename(log.path, tmp_path / "app.log.1")
        log.create_and_reopen()
    log.lines(200)

    async def second_run():
        follower = Follower(str(log.path), ROTATE_WAIT, resume=(ref, offset))
        follower.start(asyncio.get_running_loop())
        try:
            return await follow(follower, lambda out: len(shipped) + len(out) >= len(log.written))
        finally:
            follower.close()

    rest = asyncio.run(second_run())
    assert shipped + rest == bytes(log.written)


def test_restart_with_reused_inode_is_not_fooled(tmp_path):
    """Same inode, other first bytes: a new file, read from its start."""
    path = tmp_path / "app.log"
    path.write_bytes(b"old line 1\n" * 50)

    async def read_all(resume=None):
        follower = Follower(str(path), ROTATE_WAIT, resume=resume)
        follower.start(asyncio.get_running_loop())
        chunk = follower.read(1 << 20)
        follower.close()
        return chunk

    first = asyncio.run(read_all())
    with open(path, "r+b") as f:   # rewritten in place: same inode, new content, longer
        f.write(b"NEW " * 200 + b"\n")
    second = asyncio.run(read_all(resume=(first.ref, first.end)))
    assert second.start == 0 and second.ref.gen == first.ref.gen + 1
    assert (second.ref.prev_gen, second.ref.prev_end) == (first.ref.gen, first.end)
