"""The journal behind apps.kvstore, in process: the record format (protocols.journal) cut at
every byte and corrupted at every record, then the file (apps.kvstore.Journal): replay, repair
of a cut-short or corrupt tail, compaction, locking, and a write the file system refuses."""
from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from apps.kvstore import Journal, JournalInUse, KeyValueStore
from protocols.journal import HEAD_SIZE, MAGIC, JournalReader, NotAJournal, frame

from ._proc import REPO

# -- the record format -------------------------------------------------------------------------

PAYLOADS = [b"one", b"two-two", b"3" * 30]
WIRE = MAGIC + b"".join(frame(p) for p in PAYLOADS)
ENDS = [len(MAGIC) + sum(HEAD_SIZE + len(p) for p in PAYLOADS[:i + 1]) for i in range(len(PAYLOADS))]


def read_all(data: bytes, cut: int | None = None) -> tuple[list[bytes], int, str | None]:
    reader = JournalReader()
    pieces = [data] if cut is None else [data[:cut], data[cut:]]
    records = [payload for piece in pieces for _, payload in reader.receive_data(piece)]
    good_end, problem = reader.close()
    return records, good_end, problem


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_records_split_anywhere(cut):
    assert read_all(WIRE, cut) == (PAYLOADS, len(WIRE), None)


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
def test_a_journal_cut_anywhere_keeps_every_whole_record(cut):
    records, good_end, problem = read_all(WIRE[:cut])
    whole = [p for p, end in zip(PAYLOADS, ENDS) if end <= cut]
    assert records == whole
    assert good_end == (ENDS[len(whole) - 1] if whole else len(MAGIC) if cut >= len(MAGIC) else 0)
    assert (problem is None) == (cut in (0, len(MAGIC), *ENDS))


@pytest.mark.parametrize("index", range(len(PAYLOADS)))
@pytest.mark.parametrize("where", ["length", "crc", "payload"])
def test_a_corrupt_record_ends_the_good_part(index, where):
    start = len(MAGIC) + sum(HEAD_SIZE + len(p) for p in PAYLOADS[:index])
    at = {"length": start, "crc": start + 5, "payload": start + HEAD_SIZE + 1}[where]
    data = bytearray(WIRE)
    data[at] ^= 0x40
    records, good_end, problem = read_all(bytes(data))
    assert records == PAYLOADS[:index]
    assert good_end == start
    assert f"offset {start}" in problem


def test_a_zero_filled_tail_is_not_endless_empty_records():
    records, good_end, problem = read_all(WIRE + bytes(4096))
    assert (records, good_end) == (PAYLOADS, len(WIRE))
    assert "length 0" in problem


def test_a_huge_length_is_corrupt_without_waiting_for_it():
    reader = JournalReader(max_record=1000)
    assert reader.receive_data(MAGIC + b"\x7f\xff\xff\xff\x00\x00\x00\x00") == []
    assert "length" in reader.close()[1]


@pytest.mark.parametrize("data", [b"x", b"hello world, not a journal", MAGIC[:-1] + b"?"])
def test_someone_elses_file_is_not_a_journal(data):
    with pytest.raises(NotAJournal):
        JournalReader().receive_data(data)


def test_frame_refuses_empty_payloads():
    with pytest.raises(ValueError):
        frame(b"")


# -- the file --------------------------------------------------------------------------------------

VALUES = {"s": "héllo", "i": 7, "f": 2.5, "t": True, "n": None, "b": b"\x00\xff",
          "d": datetime.datetime(2024, 1, 2, 3, 4, 5), "l": [1, [2, {"x": None}]], "m": {},
          b"k": "bytes key", "cr\r": "a\rb\r\nc\n", "nested": [{"k\r\n": "\r"}, "\r\r"],
          "ws": " \t\n\t "}


def open_store(path, **options) -> KeyValueStore:
    return KeyValueStore(Journal(str(path), **options))


def close(store: KeyValueStore) -> None:
    store._journal.close()


def test_replay_restores_every_type(tmp_path):
    path = tmp_path / "j"
    store = open_store(path)
    for key, value in VALUES.items():
        store.set(key, value)
    store.set("gone", 1)
    store.delete("gone")
    close(store)
    again = open_store(path)
    assert again._data == VALUES
    assert list(again.keys()) == list(VALUES)
    close(again)


def test_failed_operations_write_nothing(tmp_path):
    path = tmp_path / "j"
    store = open_store(path)
    size = store._journal.size
    with pytest.raises(KeyError):
        store.delete("missing")
    with pytest.raises(TypeError):
        store.set(["unhashable"], 1)
    with pytest.raises(TypeError):
        store.set("k", object())                # will not marshal
    with pytest.raises(OverflowError):
        store.set("k", 2**40)                   # XML-RPC ints are 32-bit
    with pytest.raises(ValueError):
        store.set("k", "bell\x07")              # XML cannot carry it: replay would stop there
    assert store._journal.size == size == os.path.getsize(path)
    assert store._data == {}
    close(store)


@pytest.mark.parametrize("key", [7, -1, 2**61 - 1, 3 * (2**61 - 1), 1.5, True, None,
                                 datetime.datetime(2024, 1, 1), ("t",), frozenset()],
                         ids=repr)
def test_keys_are_str_or_bytes(tmp_path, key):
    """Keys whose hash is not randomized could flood the dict (hash(i * (2**61 - 1)) == 0):
    refused, with or without a journal, before anything is written."""
    store = open_store(tmp_path / "j")
    size = store._journal.size
    with pytest.raises(TypeError, match="str or bytes"):
        store.set(key, 1)
    assert store._journal.size == size and store._data == {}
    close(store)
    memory = KeyValueStore()
    with pytest.raises(TypeError):
        memory.set(key, 1)
    assert memory._data == {}


@pytest.mark.parametrize("value", [
    datetime.datetime(2024, 1, 2, 3, 4, 5, 600),
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    [{"when": datetime.datetime(2024, 1, 2,
                                tzinfo=datetime.timezone(datetime.timedelta(hours=2)))}],
], ids=["microseconds", "utc", "nested-offset"])
def test_datetimes_that_would_not_replay_as_stored_are_refused(tmp_path, value):
    """dateTime.iso8601 has whole seconds and no zone: stored, such a value would come back
    different after a restart, so it is refused and nothing is written."""
    store = open_store(tmp_path / "j")
    size = store._journal.size
    with pytest.raises(ValueError, match="dateTime"):
        store.set("when", value)
    assert store._journal.size == size and store._data == {}
    store.set("when", datetime.datetime(2024, 1, 2, 3, 4, 5))
    close(store)
    again = open_store(tmp_path / "j")
    assert again._data == {"when": datetime.datetime(2024, 1, 2, 3, 4, 5)}
    close(again)


def test_carriage_returns_are_written_as_references(tmp_path):
    """A raw CR would be read back as LF (XML end-of-line handling): the record holds none."""
    path = tmp_path / "j"
    store = open_store(path)
    store.set("k\r", {"m\r": "\r\n\r"})
    close(store)
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.count(b"&#13;") == 4
    again = open_store(path)
    assert again._data == {"k\r": {"m\r": "\r\n\r"}}
    close(again)


def test_what_a_local_caller_stores_replays_beyond_the_wire_bounds(tmp_path):
    path = tmp_path / "j"
    deep = "bottom"
    for _ in range(60):                         # the wire refuses more than ~32 levels
        deep = [deep]
    store = open_store(path)
    store.set("deep", deep)
    close(store)
    again = open_store(path)
    assert again._data == {"deep": deep}
    close(again)


def write_journal(path, n: int) -> list[int]:
    """n sets; the file offset after each."""
    store = open_store(path)
    ends = []
    for i in range(n):
        store.set(f"k{i}", i)
        ends.append(store._journal.size)
    close(store)
    return ends


def test_a_write_cut_short_by_a_crash_loses_only_that_write(tmp_path, caplog):
    """Every length the file can have when a crash interrupts the last write."""
    path = tmp_path / "j"
    ends = write_journal(path, 3)
    full = path.read_bytes()
    for cut in range(ends[1], ends[2]):
        path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, "apps.kvstore"):
            store = open_store(path)
        assert store._data == {"k0": 0, "k1": 1}
        assert (cut == ends[1]) == (not caplog.records)
        assert os.path.getsize(path) == ends[1]          # cut back to the good part
        store.set("after", cut)
        close(store)
        again = open_store(path)
        assert again._data == {"k0": 0, "k1": 1, "after": cut}
        close(again)
        path.write_bytes(full)
    assert not list(tmp_path.glob("j.corrupt-*"))        # cut short: nothing worth keeping


def test_a_corrupt_tail_is_reported_kept_aside_and_skipped(tmp_path, caplog):
    path = tmp_path / "j"
    ends = write_journal(path, 5)
    data = bytearray(path.read_bytes())
    data[ends[2] + HEAD_SIZE + 10] ^= 0xFF               # inside the fourth record's payload
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "apps.kvstore"):
        store = open_store(path)
    assert store._data == {"k0": 0, "k1": 1, "k2": 2}
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "bad checksum" in warning.getMessage() and "kept in" in warning.getMessage()
    (kept,) = tmp_path.glob("j.corrupt-*")
    assert kept.read_bytes() == bytes(data[ends[2]:])
    store.set("new", "after the repair")
    close(store)
    caplog.clear()
    with caplog.at_level(logging.WARNING, "apps.kvstore"):
        again = open_store(path)
    assert again._data == {"k0": 0, "k1": 1, "k2": 2, "new": "after the repair"}
    assert not caplog.records
    close(again)


def test_a_record_with_a_good_checksum_but_bad_content_is_a_corrupt_tail(tmp_path, caplog):
    path = tmp_path / "j"
    write_journal(path, 2)
    with open(path, "ab") as f:
        f.write(frame(b"<methodCall><methodName>drop_all</methodName></methodCall>"))
        f.write(frame(b"not xml at all"))
    with caplog.at_level(logging.WARNING, "apps.kvstore"):
        store = open_store(path)
    assert store._data == {"k0": 0, "k1": 1}
    assert "unknown operation 'drop_all'" in caplog.text
    close(store)


def test_someone_elses_file_is_left_alone(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"precious notes\n")
    with pytest.raises(NotAJournal):
        open_store(path)
    assert path.read_bytes() == b"precious notes\n"


def test_compaction_bounds_the_file_and_keeps_the_data(tmp_path):
    path = tmp_path / "j"
    store = open_store(path, compact_min=8192)
    for i in range(2000):
        store.set(f"k{i % 10}", "v" * 50 + str(i))
        if i % 7 == 0:
            store.delete(f"k{i % 10}")
        assert os.path.getsize(path) < 2 * 8192 + 1024
    journal = store._journal
    assert journal.compactions > 5
    assert journal.size == os.path.getsize(path)
    assert not (tmp_path / "j.compact").exists()
    expected = dict(store._data)
    close(store)
    again = open_store(path)
    assert again._data == expected
    close(again)


def test_a_journal_full_of_garbage_is_compacted_at_start(tmp_path):
    path = tmp_path / "j"
    store = open_store(path, compact_min=10**9)
    for i in range(500):
        store.set("k", i)
    close(store)
    big = os.path.getsize(path)
    (tmp_path / "j.compact").write_bytes(b"a compaction that crashed before its rename")
    store = open_store(path, compact_min=4096)
    assert store._data == {"k": 499}
    assert os.path.getsize(path) < big // 100
    assert not (tmp_path / "j.compact").exists()
    close(store)


def test_one_server_per_journal(tmp_path):
    path = tmp_path / "j"
    store = open_store(path)
    with pytest.raises(JournalInUse):
        open_store(path)
    close(store)
    close(open_store(path))


def test_fsync_is_a_choice(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    store = open_store(tmp_path / "a")
    synced.clear()
    store.set("x", 1)
    assert synced == []
    close(store)
    store = open_store(tmp_path / "b", fsync=True)
    synced.clear()
    store.set("x", 1)
    store.delete("x")
    assert len(synced) == 2
    close(store)


def test_a_write_the_file_system_refuses_leaves_no_half_record(tmp_path):
    """RLIMIT_FSIZE makes the kernel write part of a record and refuse the rest (EFBIG), as
    a full disk would; in a child process, so the limit touches nothing else."""
    path = tmp_path / "j"
    script = textwrap.dedent(f"""
        import os, resource, signal, sys
        from apps.kvstore import Journal, KeyValueStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = KeyValueStore(Journal({str(path)!r}))
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        done = 0
        try:
            for i in range(1000):
                store.set(f"k{{i}}", "x" * 100)
                done += 1
        except OSError as exc:
            print(done, exc.errno, store._journal.size, os.path.getsize({str(path)!r}))
        try:
            store.set("late", "x" * 1000)
        except OSError:
            print("refused again")
        store._journal.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         timeout=30, text=True)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    done, errno_, size, file_size = map(int, first.split())
    assert done > 5 and errno_ == 27 and size == file_size      # EFBIG; the half record undone
    assert second == "refused again"
    store = open_store(path)
    assert store._data == {f"k{i}": "x" * 100 for i in range(done)}
    close(store)
