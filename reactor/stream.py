"""StreamHandler: a connected stream socket (TCP or Unix), the recipe's `TCPClient` grown up.

Writes
    `write()` sends at once when nothing is queued (the common case costs one send() and no
    selector call) and queues only what the kernel would not take.  The queue is a deque of
    chunks with a byte count: `bytes` are queued as zero-copy memoryview slices, mutable
    buffers are copied once (the caller may reuse them).  A partial send advances the first
    chunk by re-slicing its memoryview, never by shifting a big buffer, and several queued
    chunks leave in one `sendmsg()` (writev).  So a 256 MiB write moves in O(n), not O(n^2).

Flow control
    Past `high_water` queued bytes, `pause_writing()` is called; back under `low_water`,
    `resume_writing()`.  By default they pause and resume *reading* this connection: a peer
    that does not read what it asked for is not read from either, so memory stays bounded.

Closing
    Every way out ends in one place, `handle_close()`, which the reactor calls once: it closes
    the socket and calls `connection_lost(exc)` once.  `close()` stops reading, flushes the
    queue (bounded by `close_timeout`), then, if the peer has not finished sending, half-closes
    and drains its input for up to `linger_timeout` so that the peer reads our last bytes
    instead of a reset (a close with unread input makes the kernel send RST).  `abort()` drops
    the queue and resets at once.  EOF from the peer turns reading off for good: a half-closed
    socket stays readable forever, and polling it would spin (waitress CVE-2024-49769).
"""
from __future__ import annotations

import collections
import errno
import logging
import socket
import struct
from typing import Any

from .handler import EventHandler
from .timers import Timer

log = logging.getLogger(__name__)

_DISCONNECTED = frozenset({errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED,
                           errno.EPIPE, errno.EBADF, errno.ETIMEDOUT})
_IOV_MAX = 64                       # chunks per sendmsg(); the kernel limit is 1024


class StreamHandler(EventHandler):
    """A connected stream socket with asyncio's callback vocabulary."""

    # recv(n) allocates n bytes before it reads.  asyncio asks for 256 KiB, above glibc's mmap
    # threshold (128 KiB): each read then maps fresh pages, faults them in, and unmaps them.
    # Just under the threshold the block comes from the heap and its pages stay warm.  Measured
    # on 100 KiB echo against asyncio: reads of 127 KiB 1.0x; 64 KiB 0.8x (two reads and two
    # sends per message); growing reads up to 1 MiB 0.35x (fresh pages faulted in every read).
    max_read: int = 127 * 1024
    reports_wants_changes = True      # every change of _reading or of an empty queue calls _update
    high_water: int = 64 * 1024
    low_water: int = 16 * 1024
    idle_timeout: float | None = None
    close_timeout: float = 30.0
    linger_timeout: float = 2.0

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:             # the peer may already be gone; the first read says so
                pass
        self.sock = sock
        self.address = address
        self._recv, self._send = sock.recv, sock.send
        self._max_read = self.max_read
        self._fd = sock.fileno()
        self._queue: collections.deque = collections.deque()
        self._queued = 0
        self.bytes_in = self.bytes_out = 0
        self._reading = True          # the application wants data
        self._eof = False             # the peer finished sending
        self._closing = False         # close() called: flush, then go
        self._eof_after_flush = False # write_eof() called with data queued
        self._lingering = False       # flushed and half-closed: discarding the peer's input
        self._write_shut = False
        self._write_paused = False
        self._write_blocked = False   # any of closing, done, write-shut, eof-after-flush
        self._done = False            # handle_close ran
        self._exc: BaseException | None = None
        self._timers: list[Timer] = []    # close and linger deadlines (at most two)
        self._idle_timer: Timer | None = None
        self._last_activity = 0.0
        self._idle_mark = 0

    # -- the reactor's side --------------------------------------------------------------------

    def fileno(self) -> int:
        return self._fd

    def wants_to_receive(self) -> bool:
        return self._reading

    def wants_to_send(self) -> bool:
        return bool(self._queue)

    def handle_added(self) -> None:
        self._max_read = self.max_read
        if self.idle_timeout is not None:
            self._last_activity = self.reactor.time()
            self._idle_timer = self.reactor.call_later(self.idle_timeout / 4, self._check_idle)
        self.connection_made()

    def handle_receive(self) -> None:
        if not self._reading:      # paused or closed by another handler earlier in this batch
            return
        try:
            data = self._recv(self._max_read)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if data:
            self.bytes_in += len(data)
            self.data_received(data)
        else:
            self._eof_seen()

    def _eof_seen(self) -> None:
        self._eof, self._reading = True, False
        self.reactor.update(self)
        if not self.eof_received() and not self._closing:
            self.close()
        elif self._write_shut and not self._queue:
            self.reactor.remove(self)

    def _discard_input(self) -> None:
        """handle_receive while lingering: throw the peer's input away until its FIN."""
        try:
            data = self._recv(self.max_read)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.reactor.remove(self)

    def handle_send(self) -> None:
        queue = self._queue
        try:
            if len(queue) == 1:
                sent = self.sock.send(queue[0])
            else:
                sent = self.sock.sendmsg([queue[i] for i in range(min(len(queue), _IOV_MAX))])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        self.bytes_out += sent
        self._queued -= sent
        if self.idle_timeout is not None:
            self._last_activity = self.reactor.time()
        while sent:
            head = queue[0]
            if sent >= len(head):
                sent -= len(head)
                queue.popleft()
            else:
                queue[0] = head[sent:]
                break
        if self._write_paused and self._queued <= self.low_water:
            self._write_paused = False
            self.resume_writing()
        if not queue:
            self.reactor.update(self)
            self._flushed()

    def handle_close(self) -> None:
        if self._done:
            return
        self._done = self._write_blocked = True
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._queue.clear()
        self._queued = 0
        self._reading = False
        try:
            self.sock.close()
        finally:
            self.connection_lost(self._exc)

    def handle_error(self, exc: BaseException) -> None:
        log.error("unhandled error in %r, closing it", self, exc_info=exc)
        self._exc = exc
        self.abort()

    # -- the application's side ----------------------------------------------------------------

    def connection_made(self) -> None:
        """The handler is in the reactor and may write."""

    def data_received(self, data: bytes) -> None:
        """Bytes arrived."""

    def eof_received(self) -> bool | None:
        """The peer will send nothing more; return True to keep our side open for writing."""
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        """Called once at the end: exc is None for an orderly close, else what ended it."""

    def pause_writing(self) -> None:
        """The queue passed high_water: by default stop reading this peer."""
        self.pause_reading()

    def resume_writing(self) -> None:
        """The queue fell to low_water: by default read this peer again."""
        self.resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send data, now if the kernel takes it, else queued in order."""
        if self._write_blocked:
            if self._closing or self._done:
                return
            raise RuntimeError("write() after write_eof()")
        if not self._queue:
            try:
                sent = self._send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_out += sent
            if type(data) is bytes and sent == len(data):      # the common case ends here
                return
            data = memoryview(data).cast("B")
            if sent == data.nbytes:
                return
            data = data[sent:]
            if self.reactor is not None:
                self.reactor.update(self)
        else:
            data = memoryview(data).cast("B")
            if not data.nbytes:
                return
        if not isinstance(data.obj, bytes):
            data = memoryview(bytes(data))      # the caller may reuse a mutable buffer
        self._queue.append(data)
        self._queued += len(data)
        if not self._write_paused and self._queued > self.high_water:
            self._write_paused = True
            self.pause_writing()

    def writelines(self, chunks) -> None:
        """write() each chunk in order."""
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        """Half-close: send FIN after what is queued; we can still receive."""
        if self._write_shut or self._eof_after_flush or self._done:
            return
        self._write_blocked = True
        if self._queue:
            self._eof_after_flush = True
        else:
            self._shutdown_write()

    def can_write_eof(self) -> bool:
        return True

    def pause_reading(self) -> None:
        """Stop reading: the kernel window fills and the peer is slowed down."""
        if self._reading:
            self._reading = False
            if self.reactor is not None:
                self.reactor.update(self)

    def resume_reading(self) -> None:
        """Read again (unless the peer finished or we are closing)."""
        if not self._reading and not (self._eof or self._closing or self._done):
            self._reading = True
            if self.reactor is not None:
                self.reactor.update(self)

    @property
    def is_reading(self) -> bool:
        return self._reading

    @property
    def write_buffer_size(self) -> int:
        """Bytes queued but not yet taken by the kernel."""
        return self._queued

    @property
    def closing(self) -> bool:
        return self._closing or self._done

    def close(self) -> None:
        """Flush what is queued (within close_timeout), then close. Idempotent."""
        if self._closing or self._done:
            return
        self._closing = self._write_blocked = True
        self._reading = False
        if self.reactor is None:
            self.handle_close()
            return
        self.reactor.update(self)
        if self._queue:
            self._timers.append(self.reactor.call_later(self.close_timeout, self._close_timed_out))
        else:
            self._flushed()

    def abort(self) -> None:
        """Drop what is queued and reset the connection now. Idempotent."""
        if self._done:
            return
        self._queue.clear()
        self._queued = 0
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self._leave()

    # -- internals -----------------------------------------------------------------------------

    def _leave(self) -> None:
        if self.reactor is not None and self._r_fd >= 0:
            self.reactor.remove(self)
        else:
            self.handle_close()

    def _lost(self, exc: OSError) -> None:
        if getattr(exc, "errno", None) in _DISCONNECTED:
            log.debug("%r: connection lost: %s", self, exc)
        else:
            log.warning("%r: socket error: %s", self, exc)
        self._exc = exc
        self._queue.clear()
        self._queued = 0
        self._leave()

    def _flushed(self) -> None:
        if self._eof_after_flush:
            self._eof_after_flush = False
            self._shutdown_write()
        if not self._closing or self._done or self._lingering:
            return
        for timer in self._timers:      # the close deadline: met, the linger has its own
            timer.cancel()
        self._timers.clear()
        if self._eof:
            self._leave()
            return
        # Lingering close: FIN (unless write_eof sent it), then read and discard until the
        # peer's FIN or the deadline, so that our last bytes are not lost to a reset.
        if not self._write_shut:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._leave()
                return
        self._write_shut = self._lingering = self._reading = True
        self.handle_receive = self._discard_input         # type: ignore[method-assign]
        self.reactor.update(self)
        self._timers.append(self.reactor.call_later(self.linger_timeout, self._leave))

    def _shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self._lost(exc)
            return
        self._write_shut = self._write_blocked = True
        if self._eof:
            self._leave()

    def _close_timed_out(self) -> None:
        self._exc = TimeoutError(f"{self._queued} bytes still queued {self.close_timeout} s after close()")
        self.abort()

    def _check_idle(self) -> None:
        """Every idle_timeout/4: did bytes move since the last look?  Counting bytes instead of
        stamping the time on every read and write keeps the hot path free of the clock; the
        price is precision: the close comes between 1 and 1.25 idle_timeout after the last
        activity."""
        self._idle_timer = None
        if self._done or self._closing:
            return
        now, moved = self.reactor.time(), self.bytes_in + self.bytes_out
        if moved != self._idle_mark:
            self._idle_mark, self._last_activity = moved, now
        elif now - self._last_activity >= self.idle_timeout:
            log.debug("%r: idle for %.1f s", self, now - self._last_activity)
            self._last_activity = now            # if it stays open, another full period
            self.idle_timed_out()
            if self._done or self._closing:
                return
        self._idle_timer = self.reactor.call_later(self.idle_timeout / 4, self._check_idle)

    def idle_timed_out(self) -> None:
        """Nothing moved for idle_timeout seconds: by default close (flushing)."""
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd} peer={self.address!r}>"
