"""TLS under any StreamHandler, server side and client side, without blocking the reactor.

Why it has this shape
---------------------
The recipe (11.10) wraps a blocking socket with the module-level `ssl.wrap_socket()`, gone since
Python 3.12.  Here OpenSSL never touches the socket: it talks to two `ssl.MemoryBIO`s
(`SSLContext.wrap_bio`), and the handler moves ciphertext between them and the socket itself,
as asyncio, trio and Twisted do.  Measured against `wrap_socket(do_handshake_on_connect=False)`
on 1 KiB echo over 10 connections, the memory BIO costs the same or a little less server CPU
per round trip (7.2-7.5 us against 7.4-7.6 us): it makes more Python-level calls, but reads the
socket once per event where OpenSSL on a socket reads each record's header and body apart, and
the SSLSocket's Python wrapper has its own cost.  What decides is what the BIO makes simple:

  * the write queue holds ciphertext, so StreamHandler's own queue, memoryview slicing, writev,
    water marks and `handle_send` are reused unchanged, and a partial send is just a partial
    send (an SSLSocket must retry a blocked write with the very same buffer).  Plaintext that
    cannot be encrypted yet is held as views of the caller's bytes: writes made during the
    handshake, a write blocked on a read, and the rest of a large write, which is encrypted a
    slice (about high_water) at a time as the ciphertext queue drains, so one 100 MB write
    never makes 100 MB of ciphertext.  `write_buffer_size` counts both, and
    `pause_writing()`/`resume_writing()` follow it whichever way the bytes leave;
  * "want write" is simply a non-empty ciphertext queue (a memory BIO never blocks), and "want
    read" is the socket's read interest: the handshake is driven by SSLWantReadError alone;
  * nothing reaches the application unless `SSLObject.read()` returned it after the handshake
    (the bug class of CVE-2023-40217 cannot happen), and EOF is seen by us, so a TCP close
    without close_notify is told apart from a clean one (`SSLEOFError`, truncation);
  * decrypted bytes never hide where the selector cannot see them: after each read the loop
    reads records until the BIO is empty, and a `resume_reading()` delivers what was left
    buffered from a callback, without waiting for the socket.

How a plain handler class goes over TLS
---------------------------------------
`start_tls(handler, context, ...)` changes the handler's class to a variant built once per class
as `class TLSFoo(Foo, TLSStreamHandler)`.  C3 puts TLSStreamHandler *under* Foo and its bases
and right above StreamHandler, so every method Foo overrides still runs first and its `super()`
calls reach the TLS layer: `write`, `close`, `handle_close`, `resume_reading` of the user's class
keep working.  The price of sitting under the user's class is that its names win: so every name
of the TLS layer's own starts with `_tls_` or `tls_` (mpconn's handler has a `_handshake` of its
own; an application may well keep a `handshake_done`), and only StreamHandler's methods are
overridden.  One method sits above the user's class: the variant's `handle_close` runs the TLS
layer's clean-up (handshake timer, the on_handshake callback) even when a `handle_close` of the
class does not reach ours through super().  The plaintext StreamHandler is not touched, so its
hot path costs exactly what it did.  `listen_tcp(..., ssl_context=)` and
`connect_tcp(..., ssl_context=, server_hostname=)` call start_tls on every handler their
factory makes.

Semantics, as Twisted's TLS layer: `connection_made()` comes at TCP connect and may write (the
bytes are held and encrypted when the handshake ends); `handshake_completed()` comes when the
handshake succeeded (look at ALPN or the peer certificate there); `data_received()` only after
it.  A failed or timed-out handshake ends in `connection_lost(exc)`.  `close()` flushes,
sends close_notify, half-closes TCP and waits up to `linger_timeout` for the peer's close_notify
or FIN (TLS 1.3 peers need not answer).  `write_eof()` sends close_notify and keeps reading.
`abort()` resets without close_notify.  A TCP EOF without close_notify after the handshake is a
truncation: `connection_lost(ssl.SSLEOFError)`, and nothing queued is sent.
"""
from __future__ import annotations

import collections
import logging
import socket
import ssl
from typing import Any, Callable

from .stream import StreamHandler
from .timers import Timer

log = logging.getLogger(__name__)

HANDSHAKE, OPEN, SHUT, FAILED = "handshake", "open", "shut", "failed"
_READABLE = (OPEN, SHUT)    # SHUT: our close_notify went out (write_eof); the peer may go on
RECORD = 16 * 1024          # the largest TLS record's plaintext: one SSL read never returns more
MAX_UNREAD = 4 * RECORD     # ciphertext read for a blocked write while the application pauses

_WantRead = ssl.SSLWantReadError
_ZeroReturn = ssl.SSLZeroReturnError        # read() returns b"" instead, unless we sent ours
_SSLError = ssl.SSLError

OnHandshake = Callable[[StreamHandler, "BaseException | None"], Any]


class TLSStreamHandler(StreamHandler):
    """A StreamHandler whose bytes go through TLS; made by start_tls() (see the module doc)."""

    handshake_timeout: float | None = 60.0      # asyncio's default; None waits forever
    _tls_ssl: ssl.SSLObject | None = None
    _tls_timer: Timer | None = None
    _tls_on_handshake: OnHandshake | None = None
    _tls_want_read = False

    # -- set-up ----------------------------------------------------------------------------------

    def __init__(self, sock: socket.socket, address: Any = None) -> None:
        # Only for a TLSStreamHandler (subclass) made directly: the state of one that start_tls()
        # was not given yet.  A class that start_tls() swapped never runs this.
        super().__init__(sock, address)
        self._tls_state, self._tls_direct = "unset", False
        self._tls_held: collections.deque = collections.deque()

    def _tls_setup(self, context: ssl.SSLContext, server_side: bool, server_hostname: str | None,
                   handshake_timeout: float | None, on_handshake: OnHandshake | None) -> None:
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls_ssl = context.wrap_bio(self._tls_in, self._tls_out, server_side=server_side,
                                     server_hostname=None if server_side else server_hostname)
        # The C object under SSLObject has the same methods; calling it directly saves a Python
        # frame per call on the hot path.
        core = getattr(self._tls_ssl, "_sslobj", self._tls_ssl)
        self._tls_read, self._tls_write, self._tls_pending = core.read, core.write, core.pending
        self._tls_server_side = server_side
        self._tls_state = HANDSHAKE
        self._tls_direct = False          # open, nothing held, not blocked: write() encrypts now
        # Plaintext not yet encrypted, as memoryviews (bytes are not copied): written during the
        # handshake, blocked on a read, or the rest of a large write (encrypted a slice at a
        # time as the ciphertext queue drains).  Counted in _queued, like the ciphertext.
        self._tls_held: collections.deque = collections.deque()
        self._tls_want_read = False       # the write at the head of _tls_held waits for a read
        self._tls_tcp_eof = False         # TCP EOF fed to the BIO (the TLS-level end may wait)
        self._tls_chunk = RECORD
        self._tls_slice = max(self.high_water, RECORD)
        self._tls_resume_due = False
        self._tls_timer = None
        self._tls_on_handshake = on_handshake
        if handshake_timeout is not None:
            self.handshake_timeout = handshake_timeout

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The SSLObject: version(), cipher(), getpeercert(), selected_alpn_protocol()..."""
        return self._tls_ssl

    @property
    def tls_handshake_done(self) -> bool:
        """True once the TLS handshake succeeded (and after, while closing)."""
        return self._tls_state is OPEN or self._tls_state is SHUT

    def handshake_completed(self) -> None:
        """The handshake succeeded; data_received() may follow.  ALPN and certificates are
        known from here on (self.ssl_object)."""

    # -- the reactor's side ----------------------------------------------------------------------

    def wants_to_receive(self) -> bool:
        state = self._tls_state
        if state is HANDSHAKE:
            return True                   # the handshake needs input even if the app paused
        if state is FAILED:
            return self._reading          # lingering after the alert
        if self._tls_tcp_eof:
            return False                  # fed to the BIO already; the socket stays readable
        if self._reading:
            return True
        # A write blocked on a read (renegotiation) needs input even if the app paused; what
        # it brings waits in the BIO for resume_reading(), up to a bound.
        return self._tls_want_read and self._tls_in.pending < MAX_UNREAD

    def handle_added(self) -> None:
        if self._tls_ssl is None:
            raise RuntimeError(f"{self!r} was added without start_tls()")
        self._tls_chunk = min(self.max_read, RECORD)
        self._tls_slice = max(self.high_water, RECORD)
        if self.handshake_timeout is not None:
            self._tls_timer = self.reactor.call_later(self.handshake_timeout,
                                                     self._tls_handshake_timed_out)
        super().handle_added()            # connection_made: it may write (held) or close
        if not self._done and not self._tls_server_side:
            self._tls_handshake()             # the ClientHello

    def handle_receive(self) -> None:
        state = self._tls_state
        if not self._reading and not self._tls_want_read and state is not HANDSHAKE:
            return                        # paused by another handler earlier in this batch
        try:
            data = self._recv(self._max_read)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if data:
            self.bytes_in += len(data)
            self._tls_in.write(data)
        else:
            self._tls_tcp_eof = True
            self._tls_in.write_eof()
            self.reactor.update(self)     # never read an EOF socket again: it stays readable
        if state is HANDSHAKE:
            self._tls_handshake()
        elif self._reading:               # open, or after our close_notify (write_eof)
            self._tls_read_app()
        else:
            self._tls_read_for_write()

    def handle_close(self) -> None:
        if self._done:
            return
        try:
            super().handle_close()
        finally:
            self._tls_release()

    # -- the application's side ------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send data (held until the handshake completes)."""
        if self._write_blocked:
            if self._closing or self._done:
                return
            raise RuntimeError("write() after write_eof()")
        if not self._tls_direct:
            self._tls_hold(data)
            self._tls_check_pause()
            return
        if len(data) > self._tls_slice:
            self._tls_write_large(data)
            return
        try:
            self._tls_write(data)
        except _WantRead:                 # a renegotiation: wait for the peer
            self._tls_hold(data)          # the retry gives OpenSSL these bytes first, as it needs
            self._tls_blocked_on_read()
            self._tls_check_pause()
            return
        except _SSLError as exc:
            self._tls_failed(exc)
            return
        data = self._tls_out.read()
        if self._queue:
            if data:
                self._tls_enqueue(data)
            return
        try:                              # the common case: the kernel takes it all
            sent = self._send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._lost(exc)
            return
        self.bytes_out += sent
        if sent == len(data):
            return
        self.reactor.update(self)
        self._tls_enqueue(memoryview(data)[sent:])

    def close(self) -> None:
        """Flush what is queued and held (within close_timeout), send close_notify, close."""
        if self._closing or self._done:
            return
        if self.reactor is None:
            super().close()
            return
        self._closing = self._write_blocked = True
        self._reading = False
        self.reactor.update(self)
        if self._queue or self._tls_held:
            self._timers.append(self.reactor.call_later(self.close_timeout, self._close_timed_out))
        if not self._queue:
            self._flushed()

    def resume_reading(self) -> None:
        super().resume_reading()
        # Records already in the BIO (the app paused in the middle of them), or an end already
        # read from TCP, would wait for the socket to turn readable, maybe forever: deliver them
        # from a callback.
        if (self._reading and not self._closing and self._tls_state in _READABLE
                and not self._tls_resume_due
                and (self._tls_in.pending or self._tls_pending() or self._tls_tcp_eof)):
            self._tls_resume_due = True
            self.reactor.call_soon(self._tls_resume)

    # -- handshake -------------------------------------------------------------------------------

    def _tls_handshake(self) -> None:
        try:
            self._tls_ssl.do_handshake()
        except _WantRead:
            self._tls_flush()
            return
        except (_SSLError, ValueError, OSError) as exc:
            self._tls_handshake_failed(exc)
            return
        self._tls_handshake_done()

    def _tls_handshake_done(self) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        self._tls_state = OPEN
        self._tls_flush()                 # Finished, session tickets
        if self._done:
            return
        self.reactor.update(self)         # wants_to_receive now follows the application
        log.debug("%r: %s handshake done", self, self._tls_ssl.version())
        # What connection_made wrote goes first: then writes made in the hooks below are
        # encrypted at once, behind it, instead of being held.
        self._tls_encrypt_held()
        if self._done:
            return
        self.handshake_completed()
        callback, self._tls_on_handshake = self._tls_on_handshake, None
        if callback is not None and not self._done:
            callback(self, None)
        if self._done:
            return
        self._tls_drained()               # resume_writing, or the next step of a close
        if (not self._done and self._tls_state is OPEN and self._reading and not self._closing
                and (self._tls_in.pending or self._tls_tcp_eof)):
            self._tls_read_app()              # application data came with the Finished

    def _tls_handshake_failed(self, exc: BaseException) -> None:
        if isinstance(exc, (ssl.SSLEOFError, ConnectionError)):
            log.debug("%r: peer left during the TLS handshake: %s", self, exc)
        else:
            log.warning("%r: TLS handshake failed: %s", self, exc)
        self._tls_fail(exc)

    def _tls_handshake_timed_out(self) -> None:
        self._tls_timer = None
        if self._tls_state is not HANDSHAKE or self._done:
            return
        log.info("%r: TLS handshake not done within %s s, resetting", self, self.handshake_timeout)
        self._exc = TimeoutError(f"TLS handshake not done within {self.handshake_timeout} s")
        self.abort()

    def _tls_fail(self, exc: BaseException) -> None:
        """The TLS session is broken: send OpenSSL's alert if it made one, then a lingering
        close without close_notify, so the peer reads the alert rather than a reset."""
        if self._done:
            return
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        self._tls_state, self._tls_direct, self._tls_want_read = FAILED, False, False
        self._exc = exc
        self._queued -= sum(map(len, self._tls_held))
        self._tls_held.clear()
        self._closing = self._write_blocked = True
        self._reading = self._eof_after_flush = False
        if self._tls_tcp_eof:
            self._eof = True              # nothing to linger for
        callback, self._tls_on_handshake = self._tls_on_handshake, None
        if callback is not None:
            callback(self, exc)
            if self._done:
                return
        self.reactor.update(self)
        self._tls_flush()
        if self._done:
            return
        for timer in self._timers:        # a close deadline: the linger below replaces it
            timer.cancel()
        self._timers.clear()
        if self._queue:                   # a peer that does not read gets linger_timeout
            self._timers.append(self.reactor.call_later(self.linger_timeout, self._leave))
        else:
            self._flushed()

    def _lost(self, exc: OSError) -> None:
        if self._exc is not None:         # already failing: the first cause is the one told
            self._queue.clear()
            self._queued = 0
            self._leave()
            return
        super()._lost(exc)

    def _tls_failed(self, exc: BaseException) -> None:
        """An error after the handshake (a bad record, an alert from the peer)."""
        log.warning("%r: TLS error: %s", self, exc)
        self._tls_fail(exc)

    def _tls_release(self) -> None:
        """Let go of what the TLS layer holds beyond StreamHandler's: the handshake timer, held
        plaintext, and the on_handshake callback (told, once, that the handshake never ended).
        Idempotent; runs at handle_close even under a class whose handle_close skips ours."""
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        self._tls_held.clear()
        self._tls_direct = self._tls_want_read = False
        callback, self._tls_on_handshake = self._tls_on_handshake, None
        if callback is not None:          # the handshake never ended
            callback(self, self._exc or ConnectionAbortedError(
                "connection closed before the TLS handshake completed"))

    # -- reading ---------------------------------------------------------------------------------

    def _tls_read_app(self) -> None:
        """Deliver what the BIO holds, record by record, until it is empty, the application
        pauses or closes, or the stream ends (close_notify, or truncation after a TCP EOF).
        The end is acted on only after everything before it was delivered."""
        read, pending, bio, chunk = self._tls_read, self._tls_pending, self._tls_in, self._tls_chunk
        # A read of RECORD bytes takes a whole record, so OpenSSL holds no decrypted rest
        # (pending()) unless the handler reads in smaller pieces: skip that call when it cannot.
        small = chunk < RECORD
        end: bytes | BaseException | None = None      # b"": close_notify
        while True:
            try:
                data = read(chunk)
            except _WantRead:
                break
            except _ZeroReturn:               # close_notify after ours (write_eof)
                end = b""
                break
            except _SSLError as exc:
                end = exc
                break
            if not data:
                end = b""
                break
            more = False                      # whole records left in the BIO after this batch
            if bio.pending or small and pending():    # several records: one data_received
                parts, size, limit = [data], len(data), self._max_read
                while bio.pending or small and pending():
                    if size >= limit:
                        more = True
                        break
                    try:
                        piece = read(chunk)
                    except _WantRead:         # the rest of a record is still on its way
                        break
                    except _ZeroReturn:
                        end = b""
                        break
                    except _SSLError as exc:
                        end = exc
                        break
                    if not piece:
                        end = b""
                        break
                    parts.append(piece)
                    size += len(piece)
                data = b"".join(parts)
            self.data_received(data)
            if not more and not self._tls_tcp_eof or end is not None:
                break                         # the common case: one record, all delivered
            if not self._reading or self._closing or self._done:
                break
        if self._done:
            return
        if self._closing:
            # close() from data_received: what is left is dropped, and whatever end was read
            # is no truncation; the close goes on (a linger ends at the TCP EOF, if seen).
            if self._lingering and self._tls_tcp_eof:
                self._leave()
                return
        elif end is not None:
            if not isinstance(end, BaseException):
                self._tls_close_notified()
            elif isinstance(end, ssl.SSLEOFError):
                self._tls_truncated(end)
            else:
                self._tls_failed(end)
            return
        if self._tls_out.pending:
            self._tls_flush()                 # a key update, an alert
        if self._tls_want_read and self._tls_state is OPEN and not self._done:
            self._tls_encrypt_held()          # a write that was blocked on this read
            self._tls_drained()

    def _tls_read_for_write(self) -> None:
        """handle_receive while the application does not read (paused, or closing) but a
        write waits on a read: feed OpenSSL, retry the write, deliver nothing."""
        if self._tls_state is OPEN and self._tls_want_read:
            self._tls_encrypt_held()
            if self._done:
                return
            self._tls_drained()
            if self._done:
                return
        elif self._tls_out.pending:
            self._tls_flush()
        self.reactor.update(self)             # the BIO's size bounds further reads

    def _tls_resume(self) -> None:
        self._tls_resume_due = False
        if self._done or not self._reading or self._closing or self._tls_state not in _READABLE:
            return
        try:
            self._tls_read_app()
        except Exception as exc:              # as from a socket event: this handler's error
            self.reactor._handler_error(self, exc)

    def _tls_close_notified(self) -> None:
        """The peer sent close_notify: a clean EOF."""
        log.debug("%r: close_notify received", self)
        self._eof_seen()

    def _tls_truncated(self, exc: BaseException) -> None:
        log.debug("%r: TCP EOF without close_notify (truncation)", self)
        self._exc = exc
        self._queue.clear()
        self._queued = 0
        self._leave()

    # -- writing ---------------------------------------------------------------------------------

    def _tls_hold(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is bytes:
            view = memoryview(data)
        else:
            view = memoryview(data).cast("B")
            if not isinstance(view.obj, bytes):
                view = memoryview(bytes(view))    # the caller may reuse a mutable buffer
        if view.nbytes:
            self._tls_held.append(view)
            self._queued += view.nbytes

    def _tls_check_pause(self) -> None:
        if not self._write_paused and self._queued > self.high_water:
            self._write_paused = True
            self.pause_writing()

    def _tls_write_large(self, data: bytes | bytearray | memoryview) -> None:
        """A write larger than a slice: encrypted a slice at a time, as the kernel takes the
        ciphertext; the rest stays plaintext (a view, not a copy) until the queue drains."""
        self._tls_direct = False
        self._tls_hold(data)
        if not self._queue:
            self._tls_encrypt_held()
        if not self._done:
            self._tls_check_pause()

    def _tls_blocked_on_read(self) -> None:
        self._tls_direct = False
        if not self._tls_want_read:
            self._tls_want_read = True
            self.reactor.update(self)         # reading is needed now, even while paused
        if self._tls_out.pending:
            self._tls_flush()                 # what the renegotiation wrote

    def _tls_encrypt_held(self) -> None:
        """Encrypt held plaintext, a slice (about high_water) at a time, while the kernel takes
        the ciphertext at once; stop once some of it has to queue (_flushed() goes on when the
        queue drains) or a write waits on a read.  The first slice is always tried: it is the
        retry of a write blocked on a read, or what the caller wants sent."""
        held, limit = self._tls_held, self._tls_slice
        while held:
            head = held[0]
            if len(head) >= limit or len(held) == 1:
                chunk = head[:limit]
            else:
                # Small writes go out together.  A retry after want-read must offer at least
                # the bytes of the blocked attempt: it was built by this same rule from the
                # same first pieces (or was one piece), so it is a prefix of this one.
                parts, size = [], 0
                for piece in held:
                    if parts and size + len(piece) > limit:
                        break
                    parts.append(piece)
                    size += len(piece)
                chunk = b"".join(parts)
            try:
                self._tls_write(chunk)
            except _WantRead:
                self._tls_blocked_on_read()
                return
            except _SSLError as exc:
                self._tls_failed(exc)
                return
            if self._tls_want_read:
                self._tls_want_read = False
                self.reactor.update(self)     # reading follows the application again
            n = len(chunk)
            self._queued -= n
            while n:
                head = held[0]
                if len(head) <= n:
                    n -= len(head)
                    held.popleft()
                else:
                    held[0] = head[n:]
                    n = 0
            self._tls_flush()
            if self._done or self._queue:
                break
        self._tls_direct = not held and self._tls_state is OPEN

    def _tls_drained(self) -> None:
        """After held plaintext was encrypted (and flushed): flow control, then the next step of
        a close() or write_eof() if nothing is left to send."""
        if self._done:
            return
        if self._write_paused and self._queued <= self.low_water:
            self._write_paused = False
            self.resume_writing()
            if self._done:
                return
        if not self._queue and (self._closing or self._eof_after_flush):
            self._flushed()

    def _tls_flush(self) -> None:
        """Put what OpenSSL wrote into the outgoing BIO on the wire, queueing what waits."""
        data = self._tls_out.read()
        if not data or self._done:
            return
        if not self._queue:
            try:
                sent = self._send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            self.bytes_out += sent
            if sent == len(data):
                return
            data = memoryview(data)[sent:]
            self.reactor.update(self)
        self._tls_enqueue(data)

    def _tls_enqueue(self, data: bytes | memoryview) -> None:
        if type(data) is not memoryview:
            data = memoryview(data)
        self._queue.append(data)
        self._queued += len(data)
        if not self._write_paused and self._queued > self.high_water:
            self._write_paused = True
            self.pause_writing()

    # -- closing ---------------------------------------------------------------------------------

    def _shutdown_write(self) -> None:
        """write_eof(): close_notify after what is queued (or held); we go on reading."""
        self._eof_after_flush = True
        self._flushed()

    def _flushed(self) -> None:
        """The ciphertext queue is empty: the next slice of held plaintext, or the next step
        of a write_eof() or close()."""
        if self._done or self._lingering:
            return
        state = self._tls_state
        if state is FAILED:
            StreamHandler._flushed(self)      # FIN, then discard the peer's bytes (bounded)
            return
        if self._tls_held:
            if state is OPEN and not self._tls_want_read:
                self._tls_encrypt_held()      # the rest of a large write
                self._tls_drained()
            elif self._closing and self._tls_want_read and self._tls_tcp_eof:
                # The write waits for input that will never come: the peer has gone.
                self._exc = BrokenPipeError(
                    f"the peer closed while {self._queued} bytes waited to be sent")
                self._leave()
            # Else the handshake (or a read) is awaited: its end calls us again, and
            # close_timeout, armed by close(), bounds the wait.
            return
        if state is HANDSHAKE:
            if self._closing:
                self._leave()                 # nothing to say: the peer's handshake sees EOF
            return
        if state is OPEN:
            if not (self._closing or self._eof_after_flush):
                return
            self._tls_send_close_notify()
            if self._done or self._queue:
                return                        # handle_send calls us again once it is out
        if self._eof_after_flush:
            self._eof_after_flush = False
            if not self._write_shut:
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    self._lost(exc)
                    return
                self._write_shut = True
            if self._eof and not self._closing:
                self._leave()
                return
        if not self._closing:
            return
        if self._eof or self._tls_tcp_eof:
            self._leave()                     # the peer has finished already
            return
        # Wait, bounded, for the peer's close_notify or FIN; its last bytes are discarded.  The
        # close deadline is over: everything left.
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if not self._write_shut:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._leave()
                return
        self._write_shut = self._lingering = self._reading = True
        self.handle_receive = self._tls_linger_receive       # type: ignore[method-assign]
        self.reactor.update(self)
        self._timers.append(self.reactor.call_later(self.linger_timeout, self._leave))

    def _tls_send_close_notify(self) -> None:
        self._tls_state, self._tls_direct = SHUT, False
        try:
            self._tls_ssl.unwrap()
        except _WantRead:
            pass                              # sent; the peer's comes later, or not at all
        except (_SSLError, ValueError) as exc:
            log.debug("%r: cannot send close_notify: %s", self, exc)
        self._tls_flush()

    def _tls_linger_receive(self) -> None:
        """handle_receive after our close_notify: wait for the peer's, discard its data."""
        try:
            data = self._recv(self.max_read)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._leave()
            return
        self.bytes_in += len(data)
        self._tls_in.write(data)
        read = self._tls_read
        while True:
            try:
                if not read(RECORD):          # the peer's close_notify: a clean end
                    self._leave()
                    return
            except _WantRead:
                return
            except _SSLError:
                self._leave()
                return

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd} peer={self.address!r} tls={self._tls_state}>"


# -- wrapping ------------------------------------------------------------------------------------

def tls_variant(cls: type) -> type:
    """The class `cls` becomes under TLS: `class TLS<cls>(cls, TLSStreamHandler)`, built once."""
    if issubclass(cls, TLSStreamHandler):
        return cls
    if not issubclass(cls, StreamHandler):
        raise TypeError(f"TLS needs a StreamHandler, not {cls.__name__}")
    variant = cls.__dict__.get("_tls_variant_")
    if variant is None:
        def handle_close(self: TLSStreamHandler) -> None:
            # The TLS layer's clean-up (its timer, the on_handshake callback) runs even under a
            # handle_close of the class that does not reach TLSStreamHandler's through super().
            try:
                super(variant, self).handle_close()
            finally:
                self._tls_release()
        variant = type(f"TLS{cls.__name__}", (cls, TLSStreamHandler),
                       {"__module__": cls.__module__, "__qualname__": f"TLS{cls.__qualname__}",
                        "__doc__": cls.__doc__, "handle_close": handle_close})
        type.__setattr__(cls, "_tls_variant_", variant)
    return variant


def start_tls(handler: StreamHandler, context: ssl.SSLContext, *, server_side: bool,
              server_hostname: str | None = None, handshake_timeout: float | None = None,
              on_handshake: OnHandshake | None = None) -> TLSStreamHandler:
    """Make a handler that is not yet in a reactor speak TLS; returns the same object.

    on_handshake(handler, exc) is called once: exc None when the handshake succeeded, else what
    ended it (connect_tcp uses it to call on_connect only for a verified connection)."""
    if not isinstance(handler, StreamHandler):
        raise TypeError(f"TLS needs a StreamHandler, not {type(handler).__name__}")
    if handler.reactor is not None:
        raise RuntimeError("start_tls() must be called before the handler is added to a reactor")
    if handler.bytes_out or handler._queue:
        raise RuntimeError("the handler already wrote plaintext")
    if not isinstance(handler, TLSStreamHandler):
        handler.__class__ = tls_variant(type(handler))
    handler._tls_setup(context, server_side, server_hostname, handshake_timeout, on_handshake)
    return handler


def tls_server_factory(factory: Callable[[socket.socket, Any], StreamHandler],
                       context: ssl.SSLContext, handshake_timeout: float | None = None
                       ) -> Callable[[socket.socket, Any], StreamHandler]:
    """A listener factory whose every handler runs server-side TLS over context."""
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT:
        raise ValueError("a server needs a server-side context (ssl.PROTOCOL_TLS_SERVER or "
                         "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))")

    def make(sock: socket.socket, address: Any) -> StreamHandler:
        return start_tls(factory(sock, address), context, server_side=True,
                         handshake_timeout=handshake_timeout)
    make.__qualname__ = f"tls({getattr(factory, '__qualname__', factory)!s})"
    return make
