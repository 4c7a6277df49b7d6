"""The record format of an append-only journal, sans-I/O: payloads in, framed bytes out, and a
reader that finds where the good part of a journal ends.

Why it has this shape
---------------------
A journal is only as good as its worst crash.  A process killed in the middle of a write
leaves the last record cut short; a disk or a careless editor may leave garbage; a file system
that lost power may leave a run of zeros where a record should be.  So every record carries its
length and a CRC-32 of its payload, and the reader stops at the first record that does not
check out: everything before it is replayed, everything from it on is "the tail", which the
owner reports, sets aside and cuts off before appending again (SQLite's WAL and Redis's
`aof-load-truncated` take the same line: a bad record ends the log, since the records after
it describe changes to a state we no longer know).  A zero length is refused too: CRC-32 of
nothing is 0, so a zero-filled tail would otherwise read as endless empty records.

    file   = MAGIC record*
    record = length:u32 crc32:u32 payload      (network byte order; 1 <= length <= max_record)

The file I/O, and what payloads mean, belong to the owner (apps/kvstore.py): this module
neither opens files nor knows about XML, so every cut of a journal can be tested in memory.
"""
from __future__ import annotations

import struct
import zlib

MAGIC = b"REACTOR-JOURNAL 1\n"
MAX_RECORD = 64 * 1024 * 1024
_HEAD = struct.Struct("!II")
HEAD_SIZE = _HEAD.size


class NotAJournal(ValueError):
    """The file does not start with MAGIC: someone else's file, never to be cut."""


def frame(payload: bytes) -> bytes:
    """One record: header and payload, ready for a single write()."""
    if not 0 < len(payload) <= MAX_RECORD:
        raise ValueError(f"a journal record holds 1 to {MAX_RECORD} bytes, not {len(payload)}")
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


class JournalReader:
    """Feed a journal's bytes in any pieces; get (offset, payload) of each good record.

    After the last piece, `close()` says how the journal ended: `good_end` is the length of
    its good part (0 if even MAGIC is incomplete: a journal never written), `problem` is None
    for a clean end, or what was wrong where the good part stops; `cut_short` tells a crash
    during the last write (the tail is a prefix of a record) from corruption."""

    def __init__(self, max_record: int = MAX_RECORD) -> None:
        self._buf = bytearray()
        self._max_record = max_record
        self._base = 0                   # file offset of _buf[0]
        self._magic = False
        self.good_end = 0
        self.problem: str | None = None
        self.cut_short = False           # the problem is only an unfinished last write
        self.records = 0

    def receive_data(self, data: bytes) -> list[tuple[int, bytes]]:
        if self.problem is not None:     # past a bad record: nothing more is believed
            return []
        buf = self._buf
        buf += data
        if not self._magic:
            if not MAGIC.startswith(bytes(buf[:len(MAGIC)])):
                raise NotAJournal("not a journal (it does not start with the journal's magic)")
            if len(buf) < len(MAGIC):
                return []
            self._magic = True
            self.good_end = len(MAGIC)
        out, pos, end = [], self.good_end - self._base, len(buf)
        while end - pos >= HEAD_SIZE:
            length, crc = _HEAD.unpack_from(buf, pos)
            if not 0 < length <= self._max_record:
                self.problem = f"bad record length {length} at offset {self._base + pos}"
                break
            if end - pos - HEAD_SIZE < length:
                break
            payload = bytes(buf[pos + HEAD_SIZE:pos + HEAD_SIZE + length])
            if zlib.crc32(payload) != crc:
                self.problem = f"bad checksum in the record at offset {self._base + pos}"
                break
            out.append((self._base + pos, payload))
            pos += HEAD_SIZE + length
        self.good_end = self._base + pos
        self.records += len(out)
        if self.problem is not None:
            buf.clear()
        else:
            del buf[:pos]
        self._base = self.good_end
        return out

    def reject(self, offset: int, why: str) -> None:
        """The owner could not use the record at offset: the good part ends there."""
        if self.problem is None or offset < self.good_end:
            self.good_end, self.problem = offset, why
            self._buf.clear()

    def close(self) -> tuple[int, str | None]:
        """(good_end, problem) once all bytes were fed."""
        if self.problem is None and self._buf:
            self.cut_short = True
            if not self._magic:
                self.problem = "journal header cut short"
            else:
                self.problem = (f"last record cut short at offset {self.good_end} "
                                f"({len(self._buf)} bytes)")
        return self.good_end, self.problem
