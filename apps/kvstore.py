"""The XML-RPC key-value store of recipe 11.6, on the reactor, with data that survives a restart.

    python -m apps.kvstore [--port 15000] [--data PATH [--fsync] [--compact-min BYTES]]
                           [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]

    >>> from xmlrpc.client import ServerProxy
    >>> s = ServerProxy('http://127.0.0.1:15000', allow_none=True)
    >>> s.set('foo', 'bar'); s.get('foo'); s.exists('foo'); s.keys(); s.delete('foo')

The recipe's `KeyValueServer` methods are kept as it writes them (get, set, delete, exists,
keys; a missing key is the KeyError that the client sees as a Fault; keys are strings, or
bytes, whose hashes are randomized: an int key could be a hash flood), served by
`protocols.xmlrpc` with `allow_none`, `system.listMethods`, `system.methodHelp` and
`system.multicall`, over kept-alive connections.

Persistence (`--data PATH`): every set and delete is appended to a journal before the call
returns (one write() of one framed record, protocols/journal.py), so a process killed at any
moment loses at most the write being made, and that one was never acknowledged.  The default
hands each record to the kernel (it survives the process, not a power cut); `--fsync` syncs
each one to the disk before answering, at the price of a disk flush per write.  At start the
journal is replayed; a record cut short or corrupt ends the good part: it is reported (a log
warning), the bad tail is kept aside as PATH.corrupt-<time> unless it was only a cut-short
last record, and the journal is cut back to its good part.  When the journal has grown to twice
its compacted size (and at least --compact-min bytes; Redis's rule for its append-only file), it
is rewritten with one record per live key into PATH.compact, synced, and renamed over PATH: a
crash at any point leaves the old journal or the new one, whole.  A lock (flock) keeps a second
server off the same journal.
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
import re
import sys
import time
from typing import Any
from xmlrpc.client import Marshaller

from protocols.journal import MAGIC, JournalReader, frame
from protocols.xmlrpc import MAX_BODY, XMLRPCDispatcher, parse_call, xmlrpc_factory
from reactor import Reactor, listen_tcp

from . import _cli, _tls

try:
    import fcntl
except ImportError:                      # not POSIX: no lock, the rest works
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("apps.kvstore")

DEFAULT_PORT = 15000
COMPACT_MIN = 1024 * 1024
COMPACT_RATIO = 2.0
_READ = 1024 * 1024
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


class JournalInUse(RuntimeError):
    """Another process holds the journal's lock."""


class Journal:
    """The append-only file behind a KeyValueStore: load() once, then append() per change."""

    def __init__(self, path: str, *, fsync: bool = False, compact_min: int = COMPACT_MIN,
                 compact_ratio: float = COMPACT_RATIO) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self.compact_min, self.compact_ratio = compact_min, compact_ratio
        self.size = 0                    # bytes in the file, all of them good
        self.base = 0                    # the size a compaction would leave (an estimate)
        self.compactions = 0
        self.broken: OSError | None = None
        self._fd: int | None = None

    # -- start: lock, replay, repair ----------------------------------------------------------

    def load(self) -> dict:
        """Lock the journal, replay it into a dict, cut off a bad tail, and open for appends."""
        try:
            os.unlink(self.path + ".compact")     # a compaction that crashed before its rename
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _lock(fd, self.path)
            data, records = self._replay(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        live = len(data)
        self.base = len(MAGIC) + (self.size - len(MAGIC)) * live // records if records else self.size
        if self.due:
            self.maybe_compact(data)
        return data

    def _replay(self, fd: int) -> tuple[dict, int]:
        data: dict = {}
        reader = JournalReader()
        total, applied = os.fstat(fd).st_size, 0
        while reader.problem is None and (chunk := os.read(fd, _READ)):
            for offset, payload in reader.receive_data(chunk):
                try:
                    # The file is ours and checksummed: the wire's bounds would only refuse
                    # what a local caller was allowed to store (nothing here recurses).
                    op, params = parse_call(payload, max_depth=1 << 20, max_elements=1 << 30)
                    if op == "set":
                        key, value = params
                        data[key] = value
                    elif op == "delete":
                        (key,) = params
                        data.pop(key, None)
                    else:
                        raise ValueError(f"unknown operation {op!r}")
                except Exception as exc:
                    reader.reject(offset, f"unreadable record at offset {offset}: {exc}")
                    break
                applied += 1
        good_end, problem = reader.close()
        if problem is not None:
            tail = total - good_end
            kept = "" if reader.cut_short or not tail else self._keep_tail(fd, good_end, total)
            log.warning("journal %s: %s; %d bytes skipped%s, %d records replayed",
                        self.path, problem, tail, kept, applied)
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        if good_end == 0:                                    # new, or its header cut short
            os.ftruncate(fd, 0)
            _write_all(fd, MAGIC)
            os.fsync(fd)
            _sync_dir(self.path)
            good_end = len(MAGIC)
        self.size = good_end
        return data, applied

    def _keep_tail(self, fd: int, start: int, end: int) -> str:
        """Copy the bad tail aside before cutting it off: it may be someone's data."""
        name = f"{self.path}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            with open(name, "xb") as out:
                offset = start
                while offset < end:
                    chunk = os.pread(fd, min(_READ, end - offset), offset)
                    if not chunk:
                        break
                    out.write(chunk)
                    offset += len(chunk)
            return f" (kept in {name})"
        except OSError as exc:
            log.error("journal %s: cannot keep the bad tail in %s: %s", self.path, name, exc)
            return ""

    # -- appends --------------------------------------------------------------------------

    def append(self, op: str, *params: Any) -> None:
        """Write one change (set key value / delete key) before it is applied; raises if the
        change cannot be made durable, and then nothing was written."""
        if self._fd is None:
            raise OSError(errno.EBADF, "the journal is not open")
        if self.broken is not None:
            raise OSError(errno.EIO, f"the journal failed earlier and is read-only: {self.broken}")
        record = _record(op, params)
        fd = self._fd
        try:
            _write_all(fd, record)
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            log.error("journal %s: write failed: %s", self.path, exc)
            try:
                os.ftruncate(fd, self.size)    # a half record would end the journal early
            except OSError as exc2:
                self.broken = exc2
            raise
        self.size += len(record)

    @property
    def due(self) -> bool:
        """The journal has grown enough since its last compaction to be worth rewriting."""
        return self.size >= self.compact_min and self.size >= self.compact_ratio * self.base

    def maybe_compact(self, data: dict) -> None:
        """Compact if due; a failure is logged and retried only after more growth."""
        if self.due and self.broken is None:
            try:
                self.compact(data)
            except Exception as exc:     # the write itself succeeded: its caller must hear so
                log.error("journal %s: compaction failed: %s", self.path, exc)
                self.base = self.size

    def compact(self, data: dict) -> None:
        """Rewrite the journal as one record per live key: written aside, synced, renamed."""
        tmp = self.path + ".compact"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            _lock(fd, tmp)
            batch, batched = [MAGIC], len(MAGIC)
            for key, value in data.items():
                record = _record("set", (key, value))
                batch.append(record)
                batched += len(record)
                if batched >= _READ:
                    _write_all(fd, b"".join(batch))
                    batch, batched = [], 0
            _write_all(fd, b"".join(batch))
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        _sync_dir(self.path)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        self.size = self.base = os.fstat(fd).st_size
        self.compactions += 1
        log.info("journal %s: compacted to %d bytes, %d keys", self.path, self.size, len(data))

    def close(self) -> None:
        """Sync and close (a graceful stop leaves nothing in the page cache only)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class _RecordMarshaller(Marshaller):
    """xmlrpc.client's Marshaller, refusing the datetimes it would change: dateTime.iso8601
    has whole seconds and no time zone, so microseconds and tzinfo would be dropped silently
    and the value read back at replay would differ from the one stored."""

    dispatch = dict(Marshaller.dispatch)

    def dump_datetime(self, value: Any, write: Any) -> None:
        if type(value) is datetime.datetime and (value.microsecond or value.tzinfo is not None):
            raise ValueError("an XML-RPC dateTime has no microseconds and no time zone: "
                             f"{value!r} would not replay as stored")
        Marshaller.dump_datetime(self, value, write)
    dispatch[datetime.datetime] = dump_datetime


def _record(op: str, params: tuple) -> bytes:
    """A change as a journal record: the XML-RPC call that makes it, so the journal holds
    exactly what the wire can carry (bytes, datetime, None, nesting) and reads like a log.

    What would not replay as stored is refused here, not discovered at the next start: a
    local caller's string with a control character or U+FFFE would marshal, and then end the
    journal at replay (XML has no way to write it); a datetime with microseconds or a time
    zone would lose them.  A CR is written as `&#13;`: xmlrpc.client.escape leaves it raw, and
    expat's end-of-line handling would read it (and CR LF) back as LF."""
    body = _RecordMarshaller("utf-8", allow_none=True).dumps(params)
    text = ("<?xml version='1.0'?>\n<methodCall>\n<methodName>%s</methodName>\n%s</methodCall>\n"
            % (op, body))                  # what dumps(params, op) writes
    if _NOT_XML.search(text):
        raise ValueError("a string holds a character XML cannot carry")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    return frame(text.encode("utf-8"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _lock(fd: int, path: str) -> None:
    if fcntl is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise JournalInUse(f"{path} is in use by another process") from None


def _sync_dir(path: str) -> None:
    """Make a rename or a creation in path's directory durable."""
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    except (OSError, AttributeError):
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


class KeyValueStore:
    """Recipe 11.6's KeyValueServer, its dict behind an optional journal."""

    _rpc_methods_ = ["get", "set", "delete", "exists", "keys"]

    def __init__(self, journal: Journal | None = None) -> None:
        self._journal = journal
        self._data: dict = journal.load() if journal is not None else {}

    def get(self, name: Any) -> Any:
        """get(name) => the value stored under name; a Fault (KeyError) if there is none."""
        return self._data[name]

    def set(self, name: Any, value: Any) -> None:
        """set(name, value): store value under name (durably, with --data, before answering).
        Names are strings (or bytes, <base64> on the wire), as in the recipe."""
        if type(name) is not str and type(name) is not bytes:
            # Their hashes are randomized per process; an int's, a float's or a datetime's are
            # not, and hash(i * (2**61 - 1)) == 0 for every i: 34,000 such keys in one 8 MiB
            # multicall make each insert probe every earlier one (seconds, and growing).
            raise TypeError(f"a key is a str or bytes, not {type(name).__name__}")
        journal = self._journal
        if journal is not None:
            journal.append("set", name, value)
            self._data[name] = value
            if journal.due:
                journal.maybe_compact(self._data)
        else:
            self._data[name] = value

    def delete(self, name: Any) -> None:
        """delete(name): remove name; a Fault (KeyError) if there is none."""
        if name not in self._data:
            raise KeyError(name)
        journal = self._journal
        if journal is not None:
            journal.append("delete", name)
            del self._data[name]
            if journal.due:
                journal.maybe_compact(self._data)
        else:
            del self._data[name]

    def exists(self, name: Any) -> bool:
        """exists(name) => True if a value is stored under name."""
        return name in self._data

    def keys(self) -> list:
        """keys() => every name that has a value."""
        return list(self._data)


def make_dispatcher(store: KeyValueStore) -> XMLRPCDispatcher:
    """The XML-RPC face of a store: its five methods, allow_none, system.*."""
    dispatcher = XMLRPCDispatcher(allow_none=True)
    dispatcher.register_instance(store)
    return dispatcher


ALPN = ["http/1.1"]


def build_parser():
    p = _cli.parser("XML-RPC key-value store (Cookbook 11.6)", DEFAULT_PORT)
    p.add_argument("--data", metavar="PATH", help="journal file: keep the data across restarts")
    p.add_argument("--fsync", action="store_true",
                   help="sync every write to disk before answering (default: to the kernel)")
    p.add_argument("--compact-min", type=int, default=COMPACT_MIN, metavar="BYTES",
                   help=f"do not compact a journal smaller than this (default {COMPACT_MIN})")
    p.add_argument("--max-body", type=int, default=MAX_BODY, metavar="BYTES",
                   help=f"largest request body, also once gunzipped (default {MAX_BODY})")
    _cli.add_cidr_flags(p)
    _tls.add_tls_flags(p)
    return p


def mount(reactor: Reactor, args, ctx=None) -> _cli.Mounted:
    """Open the journal (OSError, ValueError or RuntimeError if it cannot be) and put the store's
    listener on reactor (main() and apps.serve); the journal closes after the reactor stops."""
    journal = None
    if args.data:
        journal = Journal(args.data, fsync=args.fsync, compact_min=args.compact_min)
    try:
        store = KeyValueStore(journal)
        dispatcher = make_dispatcher(store)
        # what a request may store, a response may return: get() of the largest value set
        dispatcher.max_response = max(dispatcher.max_response, args.max_body + 1024)
        listener = listen_tcp(reactor, args.host, args.port,
                              xmlrpc_factory(dispatcher, max_body=args.max_body),
                              max_connections=args.max_connections, allow=args.allow,
                              deny=args.deny, ssl_context=ctx)
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    return _cli.Mounted([listener], [(_tls.scheme("http", ctx), listener.address, "kvstore")],
                        [journal.close] if journal is not None else [])


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    ctx = _tls.context_or_exit(p, args, alpn=ALPN)
    _cli.setup_logging(args.log_level)
    reactor = Reactor()
    try:
        mounted = mount(reactor, args, ctx)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"kvstore: cannot start: {exc}", file=sys.stderr)
        reactor.close()
        return 1
    return _cli.run(reactor, mounted, args.grace)


if __name__ == "__main__":
    sys.exit(main())
