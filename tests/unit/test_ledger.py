from fshipper.ledger import DUPLICATE, EARLY, WRITE, Ledger
from fshipper.wire import Position


def P(gen, start, end, prev=(None, None), origin="o1", first=(0, 0)):
    return Position(origin, gen, start, end, prev[0], prev[1], first)


def test_in_order_ranges_are_written_and_repeats_are_duplicates(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    assert ledger.check("h", P(0, 0, 10)) == (WRITE, 0)
    ledger.advance("h", P(0, 0, 10))
    assert ledger.check("h", P(0, 0, 10)) == (DUPLICATE, 0)
    assert ledger.check("h", P(0, 0, 30)) == (WRITE, 10)       # overlap: only the new tail
    assert ledger.check("h", P(0, 10, 30)) == (WRITE, 0)
    assert ledger.check("h", P(0, 20, 30)) == (EARLY, 0)       # 10..20 still to come
    assert ledger.check("h", P(0, 0, 10, origin="o2")) == (WRITE, 0)  # another producer


def test_a_producer_without_a_record_is_written_from_the_start_of_its_chain_only(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    assert ledger.check("h", P(0, 30, 40)) == (EARLY, 0)        # overtook 0..30: wait for it
    assert ledger.check("h", P(1, 0, 40, prev=(0, 30))) == (EARLY, 0)
    assert ledger.check("h", P(2, 500, 600, first=(2, 500))) == (WRITE, 0)
    assert ledger.check("h", P(0, 0, 30)) == (WRITE, 0)
    ledger.advance("h", P(0, 0, 30))
    assert ledger.check("h", P(0, 30, 40)) == (WRITE, 0)


def test_new_files_are_recorded_before_they_are_written(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    ledger.advance("h", P(0, 0, 10))
    ledger.note_files({"/out/h/app": 0})
    again = Ledger(str(tmp_path), "consumer")
    again.load(existing_file=lambda p: True)
    assert again.files == {"/out/h/app": 0}
    assert again.check("h", P(0, 0, 10)) == (WRITE, 0)   # the range itself was not committed


def test_next_file_follows_only_from_the_recorded_end(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.advance("h", P(4, 0, 100))
    assert ledger.check("h", P(5, 0, 50, prev=(4, 100))) == (WRITE, 0)
    assert ledger.check("h", P(5, 0, 50, prev=(4, 200))) == (EARLY, 0)   # 100..200 of file 4 missing
    assert ledger.check("h", P(3, 0, 50)) == (DUPLICATE, 0)


def test_commit_persists_and_a_failed_batch_is_forgotten(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    ledger.advance("h", P(0, 0, 10))
    ledger.commit({"/out/h/app": 11})
    ledger.advance("h", P(0, 10, 20))
    ledger.rollback()
    again = Ledger(str(tmp_path), "consumer")
    again.load(existing_file=lambda p: True)
    assert again.files == {"/out/h/app": 11}
    assert again.check("h", P(0, 10, 20)) == (WRITE, 0)
    assert again.check("h", P(0, 0, 10)) == (DUPLICATE, 0)


def test_a_failed_save_changes_nothing_in_memory(tmp_path):
    ledger = Ledger(str(tmp_path / "missing-dir"), "consumer")
    ledger.advance("h", P(0, 0, 10))
    try:
        ledger.commit({"/x": 1})
    except OSError:
        pass
    else:
        raise AssertionError("saving into a missing directory must fail")
    ledger.rollback()
    assert ledger.check("h", P(0, 0, 10)) == (WRITE, 0) and ledger.files == {}


def test_the_journal_is_replayed_and_a_torn_last_line_ignored(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    for n in range(3):
        ledger.advance("h", P(0, n * 10, n * 10 + 10))
        ledger.commit({"/out/h/app": n * 11 + 11})
    ledger.close()
    with open(tmp_path / "consumer.journal", "ab") as f:
        f.write(b'{"s":{"h o1":[0,99')   # a crash in the middle of a write
    again = Ledger(str(tmp_path), "consumer")
    again.load(existing_file=lambda p: True)
    assert again.files == {"/out/h/app": 33}
    assert again.check("h", P(0, 20, 30)) == (DUPLICATE, 0)
    assert again.check("h", P(0, 30, 40)) == (WRITE, 0)
    assert (tmp_path / "consumer.journal").stat().st_size == 0   # folded into the snapshot


def test_a_corrupt_line_in_the_middle_is_an_error(tmp_path):
    import pytest

    from fshipper.ledger import LedgerError

    (tmp_path / "consumer.journal").write_bytes(b'garbage\n{"s":{},"f":{}}\n')
    with pytest.raises(LedgerError, match="consumer.journal:1"):
        Ledger(str(tmp_path), "consumer").load()


def test_the_journal_is_folded_when_it_grows(tmp_path, monkeypatch):
    import fshipper.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "JOURNAL_MAX", 200)
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    for n in range(20):
        ledger.advance(f"h{n}", P(0, 0, 10))
        ledger.commit({f"/out/h{n}/app": 11})
    assert (tmp_path / "consumer.journal").stat().st_size <= 200
    again = Ledger(str(tmp_path), "consumer")
    again.load(existing_file=lambda p: True)
    assert len(again.files) == 20 and all(again.check(f"h{n}", P(0, 0, 10))[0] == DUPLICATE for n in range(20))


def test_an_open_line_is_recorded_and_survives_a_restart(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    ledger.advance("h", P(0, 0, 10), more=True)
    assert ledger.open_line("h") == ("o1", ledger.last("h", "o1"))
    ledger.commit({})
    again = Ledger(str(tmp_path), "consumer")
    again.load()
    assert again.open_line("h")[0] == "o1"
    again.close_line("h", "o1")
    assert again.open_line("h") is None and again.check("h", P(0, 0, 10)) == (DUPLICATE, 0)
    again.rollback()
    assert again.open_line("h")[0] == "o1"


def test_expired_files_are_forgotten_and_stay_forgotten(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    ledger.commit({"/out/h/a": 5, "/out/h/b": 6})
    ledger.forget_files(["/out/h/a", "/out/h/never"])
    assert ledger.files == {"/out/h/b": 6}
    again = Ledger(str(tmp_path), "consumer")
    again.load(existing_file=lambda p: True)
    assert again.files == {"/out/h/b": 6}


def test_state_files_are_0600(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    ledger.advance("h", P(0, 0, 10))
    ledger.commit({"/out/h/a": 11})
    ledger.close()
    for name in ("consumer.ledger", "consumer.journal"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_the_origins_of_a_host_are_known_for_the_limit(tmp_path):
    ledger = Ledger(str(tmp_path), "consumer")
    ledger.load()
    for n in range(3):
        ledger.advance("h", P(0, 0, 10, origin=f"o{n}"))
    ledger.commit({})
    again = Ledger(str(tmp_path), "consumer")
    again.load()
    assert again.origins("h") == {"o0", "o1", "o2"} and list(again.hosts()) == ["h"]
