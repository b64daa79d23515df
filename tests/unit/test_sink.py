import os
import time

import pytest

from fshipper.sink import Sink, pattern_glob, period_start
from fshipper.wire import safe_host


@pytest.mark.parametrize("host", ["web1", "web1.example.net", "db-2.prod", "host_1", "A1"])
def test_plain_host_names_are_safe(host):
    assert safe_host(host)


@pytest.mark.parametrize("host", ["a/b", "~root", "-rf", ".hidden", "..", "a..b", "/etc", "a\0b",
                                  "a b", "", "x" * 254, "a.-b", "a."])
def test_names_that_could_escape_are_refused(host):
    assert not safe_host(host)


def test_output_is_named_for_the_start_of_the_local_day(tmp_path):
    sink = Sink("app.log.%Y%m%d", str(tmp_path), 4, False, 7)
    noon = time.mktime((2026, 11, 28, 12, 30, 0, 0, 0, -1))
    assert sink.path_for("web1", noon) == str(tmp_path / "web1" / "app.log.20261128")
    assert sink.path_for("web1", noon + 12 * 3600) == str(tmp_path / "web1" / "app.log.20261129")
    minute = Sink("system.log-%Y%m%d%H%M", None, 4, False, 7)
    assert minute.path_for("any", noon) == "system.log-202611280000"
    assert period_start(noon) == time.mktime((2026, 11, 28, 0, 0, 0, 0, 0, -1))


def test_pattern_glob():
    assert pattern_glob("app.log.%Y%m%d") == "app.log.***"
    assert pattern_glob("a%%b-%d") == "a%b-*"


def test_write_confirm_and_rollback_cut_back(tmp_path):
    sink = Sink("out.%Y", str(tmp_path), 2, True, 7)
    path = sink.path_for("h", time.time())
    sink.append(path, b"one\n")
    sink.write()
    lengths = sink.sync()
    sink.confirm(lengths)
    assert lengths == {path: 4}
    sink.append(path, b"two\n")
    sink.write()                     # written, but the batch fails before it is recorded
    sink.rollback()
    assert open(path, "rb").read() == b"one\n"
    sink.append(path, b"three\n")
    sink.write()
    sink.confirm(sink.sync())
    assert open(path, "rb").read() == b"one\nthree\n"


def test_restore_cuts_files_to_their_recorded_length(tmp_path):
    path = tmp_path / "h" / "out"
    path.parent.mkdir()
    path.write_bytes(b"recorded\nnot recorded\n")
    sink = Sink("out", str(tmp_path), 2, True, 7)
    sink.restore({str(path): 9})
    assert path.read_bytes() == b"recorded\n"


def test_open_files_are_bounded(tmp_path):
    sink = Sink("out", str(tmp_path), 3, False, 7)
    for n in range(20):
        sink.append(sink.path_for(f"host{n}", time.time()), b"x\n")
    sink.write()
    sink.confirm(sink.sync())
    assert sink.open_count() == 3
    assert all((tmp_path / f"host{n}" / "out").read_bytes() == b"x\n" for n in range(20))


def test_files_older_than_keep_days_are_removed(tmp_path):
    sink = Sink("app.%Y%m%d", str(tmp_path), 4, False, 7)
    (tmp_path / "web1").mkdir()
    old = tmp_path / "web1" / "app.20261101"
    recent = tmp_path / "web1" / "app.20261127"
    other = tmp_path / "web1" / "notes.txt"
    for p in (old, recent, other):
        p.write_text("x\n")
    now = time.time()
    os.utime(old, (now - 10 * 86400, now - 10 * 86400))
    os.utime(other, (now - 10 * 86400, now - 10 * 86400))
    assert sink.expire(now) == [str(old)]
    assert recent.exists() and other.exists() and not old.exists()


def test_a_removed_host_directory_is_made_again(tmp_path):
    import shutil

    sink = Sink("out", str(tmp_path), 4, False, 7)
    path = sink.path_for("h", time.time())
    sink.append(path, b"one\n")
    sink.write()
    sink.confirm(sink.sync())
    shutil.rmtree(tmp_path / "h")
    sink.append(path, b"two\n")
    sink.write()
    with pytest.raises(FileNotFoundError):   # written into the deleted file: the batch fails
        sink.sync()
    sink.rollback()
    sink.append(path, b"two\n")              # its retry
    sink.write()
    sink.confirm(sink.sync())
    assert open(path, "rb").read() == b"two\n"


@pytest.mark.parametrize("hosts", [1, 10])   # an fsync per file, or one syncfs for many
def test_fsync_on_writes_every_file(tmp_path, hosts):
    sink = Sink("out", str(tmp_path), 3, True, 7)
    for n in range(hosts):
        sink.append(sink.path_for(f"host{n}", time.time()), b"line\n")
    sink.write()
    lengths = sink.sync()
    sink.confirm(lengths)
    assert sorted(lengths.values()) == [5] * hosts
    assert all((tmp_path / f"host{n}" / "out").read_bytes() == b"line\n" for n in range(hosts))


def test_batches_gathered_before_one_sync_are_all_recorded(tmp_path):
    # A busy consumer writes several batches, then syncs once: the lengths it
    # records must cover every batch, in files old and new, evicted or not.
    sink = Sink("out", str(tmp_path), 2, True, 7)
    paths = [sink.path_for(f"host{n}", time.time()) for n in range(3)]
    for batch in range(4):
        for n, path in enumerate(paths):
            sink.append(path, b"batch %d host %d\n" % (batch, n))
        sink.write()
    lengths = sink.sync()
    sink.confirm(lengths)
    assert lengths == {path: 4 * len(b"batch 0 host 0\n") for path in paths}
    assert (tmp_path / "host2" / "out").read_bytes() == b"".join(b"batch %d host 2\n" % b for b in range(4))
    assert sink.sync() == {}         # nothing written since


# --- nothing outside the output directory ------------------------------------------------


def _tree(root):
    """Every path under `root` with its bytes (files) or None (directories, links' targets)."""
    found = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            found[p] = open(p, "rb").read() if os.path.isfile(p) and not os.path.islink(p) else os.readlink(p) \
                if os.path.islink(p) else None
    return found


@pytest.fixture
def outside(tmp_path):
    d = tmp_path / "outside"
    d.mkdir()
    (d / "app.log").write_bytes(b"precious\n")
    return d


def test_a_host_directory_that_is_a_link_is_not_followed(tmp_path, outside):
    out = tmp_path / "out"
    out.mkdir()
    (out / "web9").symlink_to(outside)
    before = _tree(outside)
    sink = Sink("app.log", str(out), 4, True, 7)
    path = sink.path_for("web9", time.time())
    assert "symbolic link" in sink.unsafe(path)
    sink.append(path, b"x\n")
    with pytest.raises(OSError):
        sink.unrecorded()
    assert _tree(outside) == before


def test_an_output_file_that_is_a_link_is_not_followed(tmp_path, outside):
    out = tmp_path / "out"
    (out / "web9").mkdir(parents=True)
    (out / "web9" / "app.log").symlink_to(outside / "app.log")
    (out / "web9" / "dangling").symlink_to(outside / "new-file")
    before = _tree(outside)
    for name in ("app.log", "dangling"):
        sink = Sink(name, str(out), 4, True, 7)
        path = sink.path_for("web9", time.time())
        assert sink.unsafe(path)
        with pytest.raises(OSError):
            sink.open_beneath(path, create=True)
    assert _tree(outside) == before


def test_a_fifo_is_not_an_output_file(tmp_path):
    (tmp_path / "web9").mkdir()
    os.mkfifo(tmp_path / "web9" / "app.log")
    sink = Sink("app.log", str(tmp_path), 4, True, 7)
    assert "not a regular file" in sink.unsafe(sink.path_for("web9", time.time()))


def test_the_ledger_cannot_make_the_sink_cut_a_file_elsewhere(tmp_path, outside):
    out = tmp_path / "out"
    (out / "web1").mkdir(parents=True)
    (out / "web2").symlink_to(outside)
    sink = Sink("app.log", str(out), 4, True, 7)
    before = _tree(outside)
    for path in (str(outside / "app.log"), f"{out}/../outside/app.log", f"{out}/web1/../../outside/app.log",
                 f"{out}/web2/app.log", "/etc/passwd"):
        assert not sink.owns(path) or path == f"{out}/web2/app.log"
        sink.restore({path: 0})
    assert _tree(outside) == before
    assert sink.owns(f"{out}/web1/app.log")


def test_expiry_deletes_no_link_and_nothing_through_one(tmp_path, outside):
    out = tmp_path / "out"
    (out / "web1").mkdir(parents=True)
    (out / "web2").symlink_to(outside)
    (outside / "app.20261101").write_text("old, elsewhere\n")
    (out / "web1" / "app.20261102").symlink_to(outside / "app.20261101")
    (out / "web1" / "app.20261103").write_text("old, ours\n")
    (out / "web3").mkdir()
    (out / "web3" / "app.20261104").write_text("old, ours\n")
    now = time.time()
    for p in (outside / "app.20261101", out / "web1" / "app.20261103", out / "web3" / "app.20261104"):
        os.utime(p, (now - 30 * 86400, now - 30 * 86400))
    before = _tree(outside)
    sink = Sink("app.%Y%m%d", str(out), 4, False, 7)
    removed = sink.expire(now)
    assert sorted(removed) == [f"{out}/web1/app.20261103", f"{out}/web3/app.20261104"]
    assert _tree(outside) == before
    assert os.path.islink(out / "web1" / "app.20261102") and os.path.islink(out / "web2")
    assert not (out / "web3").exists()   # left empty: removed, the host no longer counts


def test_modes_are_0640_and_0750(tmp_path):
    old = os.umask(0o022)
    try:
        sink = Sink("app.log", str(tmp_path), 4, True, 7)
        path = sink.path_for("web1", time.time())
        sink.append(path, b"x\n")
        sink.unrecorded()
        sink.write()
        sink.confirm(sink.sync())
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640
    assert os.stat(tmp_path / "web1").st_mode & 0o777 == 0o750
    assert sink.hosts == {"web1"}


def test_without_a_directory_only_the_outputs_own_directory_is_used(tmp_path, outside):
    sink = Sink(str(tmp_path / "central" / "all.%Y"), None, 4, True, 7)
    assert sink.top == str(tmp_path / "central")
    path = sink.path_for("any", time.time())
    sink.append(path, b"x\n")
    sink.unrecorded()
    sink.write()
    assert open(path, "rb").read() == b"x\n"
    assert not sink.owns(str(outside / "app.log")) and not sink.owns(str(tmp_path / "central" / "other"))


def test_looking_at_a_path_does_not_count_as_recording_it(tmp_path):
    """A file a crash left unrecorded (made, nothing in the ledger yet) must still be
    reported by `unrecorded` after `unsafe` looked at it, or a restart cannot cut it."""
    (tmp_path / "web1").mkdir()
    (tmp_path / "web1" / "out").write_bytes(b"")
    sink = Sink("out", str(tmp_path), 4, True, 7)
    path = sink.path_for("web1", time.time())
    assert sink.unsafe(path) is None
    sink.append(path, b"x\n")
    assert sink.unrecorded() == {path: 0}


@pytest.mark.parametrize("directory", [True, False])
def test_expiry_follows_a_pattern_with_directories(tmp_path, directory):
    out = tmp_path / "out"
    if directory:
        sink, base = Sink("%Y/app.%m%d", str(out), 4, False, 7), out / "web1"
    else:
        sink, base = Sink(str(out / "%Y" / "app.%m%d"), None, 4, False, 7), out
    (base / "2020").mkdir(parents=True)
    old, recent = base / "2020" / "app.0101", base / "2020" / "app.0102"
    other = base / "2020" / "notes.0101"
    for p in (old, recent, other):
        p.write_text("x\n")
    now = time.time()
    for p in (old, other):
        os.utime(p, (now - 30 * 86400, now - 30 * 86400))
    assert sink.expire(now) == [str(old)]
    assert recent.exists() and other.exists()


def test_a_file_whose_length_could_not_be_recorded_is_reported_again(tmp_path):
    """The ledger could not record a new file's length (disk full): the retry must
    report the file again, or it writes unrecorded and a crash leaves its lines uncut."""
    sink = Sink("out", str(tmp_path), 4, True, 7)
    path = sink.path_for("web1", time.time())
    sink.append(path, b"x\n")
    fresh = sink.unrecorded()
    assert fresh == {path: 0}
    sink.rollback()
    sink.unrecord(fresh)   # what the consumer does when note_files fails
    sink.append(path, b"x\n")
    assert sink.unrecorded() == {path: 0}
