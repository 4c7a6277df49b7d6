"""Review of the TLS layer (issue 6): each test states one contract that asyncio's sslproto or
Twisted's TLSMemoryBIOProtocol keep, over loopback, with deadlines and no bare sleeps.

Tests named `test_bug_*` failed when written: each one is a finding of the review, kept failing on
purpose until the code is fixed.  The others are checks that held and are kept as regressions."""
from __future__ import annotations

import gc
import os
import socket
import ssl
import time
import tracemalloc
import weakref
from pathlib import Path

import pytest

from reactor import Reactor, StreamHandler, connect_tcp, listen_tcp, start_tls
from reactor.testing import FakeClock, run_until, stream_pair

CERTS = Path(__file__).resolve().parents[1] / "certs"


# -- helpers --------------------------------------------------------------------------------------

def server_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    return ctx


def client_ctx() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(CERTS / "ca.pem"))


class Recorder(StreamHandler):
    """Records every callback in order."""

    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.events, self.data, self.lost = [], bytearray(), []
        self.chunks = []

    def connection_made(self):
        self.events.append("made")

    def handshake_completed(self):
        self.events.append("handshake")

    def data_received(self, data):
        self.events.append("data")
        self.chunks.append(bytes(data))
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        return None

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.append(exc)


class BIOPeer:
    """A TLS client over a real socket whose ciphertext the test moves by hand."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext | None = None):
        sock.setblocking(False)
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (ctx or client_ctx()).wrap_bio(self.incoming, self.outgoing,
                                                  server_hostname="localhost")
        self.app = bytearray()
        self.handshaken = self.close_notified = self.eof = False
        self.error: BaseException | None = None

    def send_raw(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def pull(self) -> None:
        while not self.eof:
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError as exc:
                self.error, data = exc, b""
            if not data:
                self.eof = True
                self.incoming.write_eof()
                return
            self.incoming.write(data)

    def step(self, send: bool = True) -> None:
        self.pull()
        if not self.handshaken and self.error is None:
            try:
                self.tls.do_handshake()
                self.handshaken = True
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError) as exc:
                self.error = exc
        if self.handshaken and not self.close_notified and self.error is None:
            while True:
                try:
                    data = self.tls.read(1 << 16)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    data = b""
                except (ssl.SSLError, OSError) as exc:
                    self.error = exc
                    break
                if not data:
                    self.close_notified = True
                    break
                self.app += data
        if send:
            out = self.outgoing.read()
            if out:
                self.send_raw(out)

    def send_app(self, data: bytes) -> None:
        self.tls.write(data)
        self.send_raw(self.outgoing.read())


def drive(reactor: Reactor, peer: BIOPeer, predicate, timeout: float = 5.0):
    def step():
        peer.step()
        return predicate()
    return run_until(reactor, step, timeout)


def turn_for(reactor: Reactor, predicate, timeout: float, peer: BIOPeer | None = None) -> bool:
    """Turn the reactor until predicate() or the (real) deadline; says which came first.  Used
    where the assertion that follows must fail with a message rather than a TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        if peer is not None:
            peer.step()
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        reactor.run_once(0.01)


def tls_pair(reactor: Reactor, handler=Recorder, **options):
    """A server-side TLS handler on one end of a loopback TCP pair, a BIOPeer on the other."""
    client, server = stream_pair(socket.AF_INET)
    h = start_tls(handler(server), server_ctx(), server_side=True, **options)
    reactor.add(h)
    return h, BIOPeer(client)


def handshake(reactor: Reactor, h, peer: BIOPeer) -> None:
    drive(reactor, peer, lambda: peer.handshaken and "handshake" in h.events)


def timers(reactor: Reactor) -> int:
    reactor.run_once(0)
    return reactor.stats()["timers"]


@pytest.fixture
def reactor():
    r = Reactor()
    yield r
    if not r.closed:
        r.close()


@pytest.fixture
def clock_reactor():
    clock = FakeClock()
    r = Reactor(clock=clock)
    r.clock = clock
    yield r
    if not r.closed:
        r.close()


# == findings: these fail against the code under review ============================================

# -- 1. pause_writing from data held during the handshake is never undone --------------------------

class BigGreeting(Recorder):
    """Writes more than high_water in connection_made (before the handshake: held)."""

    high_water, low_water = 1024, 256
    greeting = b"G" * 4096            # small enough for any loopback socket buffer to take at once

    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.pauses = self.resumes = 0

    def connection_made(self):
        super().connection_made()
        self.write(self.greeting)

    def pause_writing(self):
        self.pauses += 1
        super().pause_writing()       # the default: stop reading the peer

    def resume_writing(self):
        self.resumes += 1
        super().resume_writing()


def test_bug_reading_stays_paused_forever_after_a_greeting_written_before_the_handshake(reactor):
    """A plaintext StreamHandler that writes 4 KiB in connection_made sends it at once and goes
    on reading.  Under TLS the bytes are held, count past high_water and pause_writing() pauses
    reading; after the handshake they are encrypted and the kernel takes them all in one send,
    but resume_writing() is never called: the server never reads its client again."""
    h, peer = tls_pair(reactor, BigGreeting)
    handshake(reactor, h, peer)
    drive(reactor, peer, lambda: len(peer.app) == len(BigGreeting.greeting))
    assert h.write_buffer_size == 0                # everything left
    peer.send_app(b"ping")
    got_it = turn_for(reactor, lambda: h.data == b"ping", 1.0, peer)
    assert (h.pauses, h.resumes) == (1, 1), "resume_writing() must follow pause_writing()"
    assert got_it, f"the server never read the peer again (is_reading={h.is_reading})"
    h.abort()


def test_bug_a_producer_started_in_connection_made_hangs_after_the_handshake(reactor):
    """The producer pattern of asyncio (write until pause_writing, go on at resume_writing),
    started in connection_made: it stops at the first pause and is never resumed."""
    total = 64 * 1024

    class Producer(Recorder):
        high_water, low_water = 8 * 1024, 2 * 1024

        def connection_made(self):
            super().connection_made()
            self.sent, self.paused = 0, False
            self.produce()

        def produce(self):
            while self.sent < total and not self.paused:
                self.write(b"p" * 1024)
                self.sent += 1024

        def pause_writing(self):
            self.paused = True

        def resume_writing(self):
            self.paused = False
            self.produce()

    h, peer = tls_pair(reactor, Producer)
    handshake(reactor, h, peer)
    done = turn_for(reactor, lambda: len(peer.app) == total, 1.5, peer)
    assert done, f"{len(peer.app)} of {total} bytes arrived; the producer is still paused={h.paused}"
    h.abort()


def test_bug_https_streamed_upload_on_a_fresh_connection_stalls(reactor):
    """The same root cause, end to end: our HTTP client starts a request in on_connect, which
    the TLS layer calls after the handshake but *before* it encrypts the held bytes, so the
    request is held; a streamed body (an iterable) is pumped until write_buffer_size passes
    high_water and then waits for resume_writing(), which never comes.  Over plain http the
    same upload takes a few milliseconds; over https it ends in ReadTimeout."""
    from protocols.client import HTTPClient
    from protocols.wsgi import wsgi_factory

    def app(environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(len(body)).encode()]

    listener = listen_tcp(reactor, "127.0.0.1", 0, wsgi_factory(app, url_scheme="https"),
                          ssl_context=server_ctx())
    client = HTTPClient(reactor, verify=str(CERTS / "ca.pem"), timeout=(5, 1))
    future = client.post(f"https://localhost:{listener.address[1]}/",
                         data=(b"u" * 16384 for _ in range(16)))        # 256 KiB, streamed
    run_until(reactor, future.done, timeout=5)
    try:
        response = future.result()
    finally:
        client.close()
        listener.close()
    assert (response.status_code, response.text) == (200, str(256 * 1024))


# -- 2. a handler whose handle_close bypasses the TLS layer (the HMAC auth stage) ------------------

def test_bug_hmac_auth_over_tls_leaves_the_handshake_timer_behind(clock_reactor):
    """protocols.auth's stage calls StreamHandler.handle_close(self) directly when the peer was
    never authenticated, skipping TLSStreamHandler.handle_close: the TLS handshake timer is never
    cancelled.  apps.rpc serves exactly this combination: a client that connects and stays
    silent is closed by the auth deadline (10 s) while the TLS handshake deadline (60 s) stays
    in the heap, holding the dead handler, its SSLObject and its BIOs."""
    from protocols.auth import with_hmac_auth
    cls = with_hmac_auth(Recorder, b"k" * 32, timeout=10)
    h, peer = tls_pair(clock_reactor, cls, handshake_timeout=60)
    assert timers(clock_reactor) == 2              # the auth and the TLS handshake deadlines
    clock_reactor.clock.advance(11, clock_reactor)  # the auth deadline, mid-TLS-handshake
    assert h.closing and h.sock.fileno() == -1
    assert timers(clock_reactor) == 0, "the TLS handshake timer was left behind"
    peer.sock.close()


def test_bug_hmac_client_over_tls_never_reports_a_handshake_timeout(clock_reactor):
    """connect_tcp(ssl_context=...) promises on_connect or on_error.  With an HMAC client class
    (JSON-RPC's client is one) a server that never finishes the TLS handshake ends the handler
    at the deadline, but on_error is never called: the caller waits for ever."""
    from protocols.rpc import json_rpc_client
    cls = json_rpc_client(b"k" * 32, auth_timeout=None)
    with socket.create_server(("127.0.0.1", 0)) as silent:       # accepts, never answers
        connected, errors = [], []
        connector = connect_tcp(clock_reactor, "127.0.0.1", silent.getsockname()[1], cls,
                                ssl_context=client_ctx(), server_hostname="localhost",
                                ssl_handshake_timeout=5, on_connect=connected.append,
                                on_error=errors.append)
        client = run_until(clock_reactor, lambda: connector.handler)
        clock_reactor.clock.advance(6, clock_reactor)
        run_until(clock_reactor, lambda: client.closing)
        turn_for(clock_reactor, lambda: errors, 0.5)
        assert client.sock.fileno() == -1          # the handler did end
        assert connected == []
        assert len(errors) == 1 and isinstance(errors[0], TimeoutError), errors


def test_plain_client_over_tls_reports_a_handshake_timeout_once(clock_reactor):
    """The control for the test above: without the auth stage on_error comes, once."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        connected, errors = [], []
        connector = connect_tcp(clock_reactor, "127.0.0.1", silent.getsockname()[1], Recorder,
                                ssl_context=client_ctx(), server_hostname="localhost",
                                ssl_handshake_timeout=5, on_connect=connected.append,
                                on_error=errors.append)
        client = run_until(clock_reactor, lambda: connector.handler)
        clock_reactor.clock.advance(6, clock_reactor)
        run_until(clock_reactor, lambda: client.lost)
        assert connected == [] and len(errors) == 1 and isinstance(errors[0], TimeoutError)
        assert client.lost == [errors[0]]
        assert timers(clock_reactor) == 0


# -- 3. close() from data_received with decrypted bytes still inside OpenSSL ----------------------

def test_bug_close_from_data_received_with_bytes_pending_in_openssl_is_reported_as_truncation(reactor):
    """A handler that reads in pieces smaller than a record (max_read < 16 KiB) and closes on
    the first one (a server answering `Connection: close`): close() sends close_notify through
    unwrap(), whose
    second SSL_shutdown() finds the unread application data and breaks the session
    (APPLICATION_DATA_AFTER_CLOSE_NOTIFY, swallowed); close() also turns `_reading` on for the
    linger, so the delivery loop goes on, reads, gets SSLEOFError and reports a truncation.
    The application closed cleanly and the peer answers close_notify: connection_lost(None)."""
    class CloseOnFirst(Recorder):
        max_read = 1024

        def data_received(self, data):
            super().data_received(data)
            self.close()

    h, peer = tls_pair(reactor, CloseOnFirst)
    handshake(reactor, h, peer)
    peer.send_app(b"x" * 4096)                     # one record, four reads of 1 KiB
    run_until(reactor, lambda: h.data)
    drive(reactor, peer, lambda: peer.close_notified or h.lost)
    if not h.lost:                                 # answer the close_notify, as a good peer does
        try:
            peer.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.lost)
    assert h.events.count("data") == 1, h.events
    assert h.lost == [None], f"a clean close() reported as connection_lost({h.lost[0]!r})"
    peer.sock.close()


# -- 3b. resume_reading() refused once TCP EOF was read, though records wait in the BIO ------------

@pytest.mark.parametrize("clean", [True, False], ids=["close_notify", "truncated"])
def test_bug_records_before_the_end_are_stranded_when_tcp_eof_was_read_during_a_pause(reactor, clean):
    """TLSStreamHandler.handle_receive sets StreamHandler's `_eof` as soon as TCP EOF is read,
    although records before it (and the close_notify) still wait in the BIO.  If the
    application pauses in the data_received of that read, StreamHandler.resume_reading()
    refuses to resume because `_eof` is set: the rest of the data, eof_received and
    connection_lost never come (a hang).  It takes decrypted bytes left over when the EOF is
    read: a max_read below one record (16 KiB; max_read=4 here also reads the socket 4 bytes
    at a time, so the EOF comes while plaintext is pending), or the blocked-write path."""
    class Pauser(Recorder):
        max_read = 4

        def data_received(self, data):
            super().data_received(data)
            self.pause_reading()

    payload = b"0123456789" * 10                  # 25 deliveries of 4 bytes
    h, peer = tls_pair(reactor, Pauser)
    handshake(reactor, h, peer)
    peer.tls.write(payload)
    if clean:
        try:
            peer.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
    peer.send_raw(peer.outgoing.read())
    peer.sock.shutdown(socket.SHUT_WR)             # then FIN
    run_until(reactor, lambda: h.data == b"0123")

    def resume_and_check():
        h.resume_reading()                         # the application is ready again, every turn
        return h.lost
    turn_for(reactor, resume_and_check, 1.0)
    assert h.data == payload, f"stranded after {len(h.data)} of 100 bytes, is_reading={h.is_reading}"
    if clean:
        assert h.events[-2:] == ["eof", "lost"] and h.lost == [None]
    else:
        assert isinstance(h.lost[0], ssl.SSLEOFError)
    peer.sock.close()


# -- 4. an exception from data_received on the resume path is swallowed ---------------------------

def test_bug_exception_in_data_received_after_resume_reading_skips_handle_error(reactor):
    """On the socket path an exception in data_received goes to handle_error (default: log and
    abort, connection_lost(exc)).  Records left in the BIO by a pause are delivered from a
    call_soon callback on resume_reading(): there the reactor's callback catch-all logs the
    exception and the connection stays open as if nothing happened."""
    class Fragile(Recorder):
        max_read = 4

        def data_received(self, data):
            super().data_received(data)
            if len(self.chunks) == 1:
                self.pause_reading()
            else:
                raise ValueError("the application broke")

    h, peer = tls_pair(reactor, Fragile)
    handshake(reactor, h, peer)
    peer.send_app(b"aaaabbbb")
    run_until(reactor, lambda: h.data == b"aaaa")
    h.resume_reading()
    run_until(reactor, lambda: h.data == b"aaaabbbb")
    turn_for(reactor, lambda: h.lost, 0.5)
    assert h.lost and isinstance(h.lost[0], ValueError), \
        f"handle_error was not called: lost={h.lost}, still in the reactor={h in reactor.handlers}"


# -- 5. Connector.cancel() during the TLS handshake -----------------------------------------------

def test_bug_connector_cancel_during_the_tls_handshake_still_calls_on_connect(reactor):
    """Connector.cancel(): 'Give up the attempt (no callback is called)'.  Once TCP is up the
    attempt goes on as a TLS handshake, but cancel() does nothing any more: the handshake ends
    and on_connect is called with a connection the caller gave up."""
    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    connected, errors = [], []
    connector = connect_tcp(reactor, "127.0.0.1", listener.address[1], Recorder,
                            ssl_context=client_ctx(), server_hostname="localhost",
                            on_connect=connected.append, on_error=errors.append)
    client = run_until(reactor, lambda: connector.handler)
    assert not client.tls_handshake_done
    connector.cancel()
    turn_for(reactor, lambda: connected or client.lost, 1.0)
    assert connected == [] and errors == [], (connected, errors)
    assert client.lost, "the cancelled attempt's connection is still open"
    listener.close()


# -- 6. delivery while paused, close while a write is blocked on a read ---------------------------

def block_first_write(h):
    """Make the next SSL write fail with want-read once, as SSL_write does during a TLS 1.2
    renegotiation (the project's own test_tls.py simulates it the same way)."""
    real_write, calls = h._tls_write, []

    def renegotiating(data):
        calls.append(bytes(data))
        if len(calls) == 1:
            raise ssl.SSLWantReadError("want read")
        return real_write(data)
    h._tls_write = renegotiating
    return calls


def test_bug_a_write_blocked_on_a_read_delivers_data_while_the_application_paused(reactor):
    """While a write waits on a read the layer must read the socket even if the application
    paused, but what it decrypts must wait for resume_reading() (asyncio's _do_read returns
    at once while _app_reading_paused).  Here data_received is called while paused."""
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    block_first_write(h)
    h.write(b"held")
    h.pause_reading()
    peer.send_app(b"ping")
    drive(reactor, peer, lambda: peer.app == b"held")
    assert h.data == b"", "data_received ran while reading was paused"
    h.resume_reading()
    run_until(reactor, lambda: h.data == b"ping")
    h.abort()


def test_bug_close_while_a_write_is_blocked_on_a_read_sends_no_close_notify(clock_reactor):
    """close() with a write blocked on a read: once the read unblocks it the held bytes go out,
    but nothing calls _flushed() again, so close_notify is never sent; the connection is reset
    at close_timeout (30 s) with a TimeoutError instead of closing cleanly."""
    h, peer = tls_pair(clock_reactor)
    handshake(clock_reactor, h, peer)
    block_first_write(h)
    h.write(b"last words")
    h.close()
    peer.send_app(b"unblock")                      # the read the write waited for
    drive(clock_reactor, peer, lambda: peer.app == b"last words")
    notified = turn_for(clock_reactor, lambda: peer.close_notified, 1.0, peer)
    clock_reactor.clock.advance(h.close_timeout + 1, clock_reactor)
    assert notified, f"no close_notify after the held bytes; then connection_lost({h.lost})"
    h.abort()


def test_bug_a_write_that_blocks_on_a_read_while_paused_is_never_sent(reactor):
    """reports_wants_changes is True, so the layer must call reactor.update() whenever
    wants_to_receive() changes.  Holding a blocked write turns it True (the read is needed)
    without telling the reactor: with reading paused beforehand, the socket is never read
    again and the write never leaves."""
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    h.pause_reading()
    reactor.run_once(0)
    block_first_write(h)
    h.write(b"held")
    assert h.wants_to_receive()
    peer.send_app(b"ping")                         # the read the write waits for
    sent = turn_for(reactor, lambda: peer.app == b"held", 1.0, peer)
    assert sent, "the blocked write was never sent: the reactor was not told to read"
    h.abort()


def test_bug_the_loop_spins_once_a_blocked_write_is_released_while_paused(reactor):
    """The converse: when the held write goes out, wants_to_receive() turns False again (the
    application is paused) without reactor.update(); the socket stays registered, and once the
    peer sends anything handle_receive() returns without reading, on every turn: a busy loop."""
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    block_first_write(h)
    h.write(b"held")
    h.pause_reading()
    peer.send_app(b"ping")
    drive(reactor, peer, lambda: peer.app == b"held")
    assert not h.wants_to_receive()
    peer.send_app(b"more")                         # readable, and nobody will read it
    start, deadline = reactor.stats()["turns"], time.monotonic() + 0.3
    while time.monotonic() < deadline:
        reactor.run_once(0.05)
    turns = reactor.stats()["turns"] - start
    assert turns < 100, f"{turns} reactor turns in 0.3 s with nothing to do"
    h.abort()


# -- 7. a public name of the TLS layer shadows the application's attribute ------------------------

def test_bug_an_application_attribute_named_handshake_done_breaks_under_tls(reactor):
    """The layer's names are said to start with _tls_ so that the user's class wins, but
    `handshake_done` is a read-only property of TLSStreamHandler, a data descriptor, which
    beats the instance's own attribute: a handler of an application-level handshake that keeps
    `self.handshake_done` works in plaintext; under TLS it reads True (the TLS handshake's) from
    the start, silently skips its own handshake, and would get AttributeError assigning it."""
    class AppHandshake(Recorder):
        def __init__(self, sock, address=None):
            super().__init__(sock, address)
            self.handshake_done = False

        def data_received(self, data):
            super().data_received(data)
            if not self.handshake_done and data.startswith(b"HELLO"):
                self.handshake_done = True
                self.write(b"WELCOME")

    h, peer = tls_pair(reactor, AppHandshake)
    handshake(reactor, h, peer)
    peer.send_app(b"HELLO")
    ok = turn_for(reactor, lambda: peer.app == b"WELCOME" or h.lost, 1.0, peer)
    assert ok and peer.app == b"WELCOME", f"connection_lost({h.lost})"
    h.abort()


# -- 8. one large write is encrypted whole ----------------------------------------------------------

def test_bug_one_large_write_to_a_slow_reader_allocates_all_its_ciphertext_at_once(reactor):
    """StreamHandler queues a large write as a view of the caller's bytes (no copy: DESIGN,
    'Queue large writes as memoryviews').  The TLS layer encrypts the whole write at once: a
    100 MB write to a peer that does not read makes 100 MB of ciphertext (and OpenSSL's BIO
    holds another copy while it is read out), far past high_water.  Encrypting from the
    plaintext view as the queue drains would keep it to about high_water."""
    size = 8 * 1024 * 1024
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    payload = os.urandom(size)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        h.write(payload)                            # the peer reads nothing
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert h.write_buffer_size > h.high_water       # flow control saw it: pause_writing ran
    assert peak < size // 4, f"{peak / 2**20:.1f} MiB allocated for one {size / 2**20:.0f} MiB write"
    h.abort()


# == checks that held (kept as regressions) =========================================================

def test_plaintext_stream_handler_queues_a_large_write_without_copying(reactor):
    """The baseline of the previous test: the plaintext handler allocates nothing per write."""
    a, b = stream_pair(socket.AF_INET)
    with b:
        h = reactor.add(Recorder(a))
        payload = os.urandom(8 * 1024 * 1024)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            h.write(payload)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert peak < 1024 * 1024
        h.abort()


def test_a_producer_that_honours_flow_control_keeps_the_ciphertext_queue_bounded(reactor):
    total, chunk = 8 * 1024 * 1024, 256 * 1024

    class Producer(Recorder):
        def start(self):
            self.sent, self.paused, self.peak = 0, False, 0
            self.produce()

        def produce(self):
            while self.sent < total and not self.paused:
                self.write(b"z" * chunk)
                self.sent += chunk
                self.peak = max(self.peak, self.write_buffer_size)

        def pause_writing(self):
            self.paused = True

        def resume_writing(self):
            self.paused = False
            self.produce()

    h, peer = tls_pair(reactor, Producer)
    handshake(reactor, h, peer)
    h.start()
    got = 0
    deadline = time.monotonic() + 20
    while got < total and time.monotonic() < deadline:      # a slow reader: 64 KiB a turn
        try:
            data = peer.sock.recv(64 * 1024)
        except BlockingIOError:
            data = b""
        if data:
            peer.incoming.write(data)
            while True:
                try:
                    got += len(peer.tls.read(1 << 16))
                except ssl.SSLWantReadError:
                    break
        reactor.run_once(0.001)
        assert h.write_buffer_size <= h.high_water + 2 * chunk
    assert got == total
    assert h.peak <= h.high_water + 2 * chunk
    h.abort()


def test_data_then_close_notify_then_fin_in_one_burst_all_reach_the_application_first(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    payload = os.urandom(300_000)
    peer.tls.write(payload)
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.send_raw(peer.outgoing.read())
    peer.sock.shutdown(socket.SHUT_WR)
    run_until(reactor, lambda: h.lost, timeout=10)
    assert bytes(h.data) == payload
    assert h.events[-2:] == ["eof", "lost"] and h.lost == [None]
    assert timers(reactor) == 0
    peer.sock.close()


def test_nothing_before_the_handshake_even_when_the_finished_and_data_share_a_segment(reactor):
    h, peer = tls_pair(reactor)
    peer.step()                                    # ClientHello
    run_until(reactor, lambda: peer.pull() or peer.incoming.pending)
    peer.step(send=False)                          # handshake done on the client side
    assert peer.handshaken
    peer.tls.write(b"right after Finished")
    peer.send_raw(peer.outgoing.read())            # Finished + data in one segment
    run_until(reactor, lambda: h.data)
    assert h.events[:3] == ["made", "handshake", "data"]
    assert h.data == b"right after Finished"
    h.abort()


def test_writes_in_handshake_completed_and_on_connect_keep_their_order(reactor):
    order = []

    class Client(Recorder):
        def connection_made(self):
            super().connection_made()
            self.write(b"1-made,")

        def handshake_completed(self):
            super().handshake_completed()
            self.write(b"2-handshake,")

    class Server(Recorder):
        def data_received(self, data):
            super().data_received(data)
            order.append(bytes(data))

    servers = []
    listener = listen_tcp(reactor, "127.0.0.1", 0, lambda s, a: servers.append(Server(s, a)) or servers[-1],
                          ssl_context=server_ctx())
    connected = []

    def on_connect(h):
        connected.append(h)
        h.write(b"3-on_connect,")
        h.write(b"4-after")
        h.close()

    connect_tcp(reactor, "127.0.0.1", listener.address[1], Client, ssl_context=client_ctx(),
                server_hostname="localhost", on_connect=on_connect)
    run_until(reactor, lambda: servers and servers[0].lost and connected and connected[0].lost)
    assert servers[0].data == b"1-made,2-handshake,3-on_connect,4-after"
    assert servers[0].lost == [None] and connected[0].lost == [None]
    listener.close()
    assert timers(reactor) == 0


def test_connect_tcp_to_an_ip_verifies_the_ip_san_and_refuses_a_wrong_name(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    results = []
    for name in (None, "not-localhost.example"):
        ok, errors = [], []
        connect_tcp(reactor, "127.0.0.1", listener.address[1], Recorder, ssl_context=client_ctx(),
                    server_hostname=name, on_connect=ok.append, on_error=errors.append)
        run_until(reactor, lambda: ok or errors)
        turn_for(reactor, lambda: False, 0.05)     # a second callback would come now
        results.append((len(ok), [type(e) for e in errors]))
        for h in ok:
            h.abort()
    assert results == [(1, []), (0, [ssl.SSLCertVerificationError])]
    listener.close()


def test_abort_in_connection_made_of_a_tls_client_reports_once(reactor):
    class Quitter(Recorder):
        def connection_made(self):
            super().connection_made()
            self.abort()

    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    ok, errors = [], []
    connector = connect_tcp(reactor, "127.0.0.1", listener.address[1], Quitter,
                            ssl_context=client_ctx(), server_hostname="localhost",
                            on_connect=ok.append, on_error=errors.append)
    run_until(reactor, lambda: errors)
    turn_for(reactor, lambda: False, 0.05)
    assert ok == [] and len(errors) == 1 and connector.handler.lost == [None]
    run_until(reactor, lambda: not listener.connections)
    listener.close()
    assert timers(reactor) == 0


def test_handler_classes_made_per_connection_are_not_kept_alive_by_the_variant_cache(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    refs = []
    for i in range(5):
        cls = type(f"PerConnection{i}", (Recorder,), {})
        refs.append(weakref.ref(cls))
        ok = []
        connect_tcp(reactor, "127.0.0.1", listener.address[1], cls, ssl_context=client_ctx(),
                    server_hostname="localhost", on_connect=ok.append)
        h = run_until(reactor, lambda: ok and ok[0])
        assert type(h).__name__ == f"TLSPerConnection{i}"
        h.abort()
        del cls, h, ok
    run_until(reactor, lambda: not listener.connections)
    listener.close()
    reactor.run_once(0)
    reactor.stats()                                # drops the reactor's "slowest handler" reference
    gc.collect()
    assert [r() for r in refs] == [None] * 5


def test_tls_variant_of_a_handler_overriding_close_and_handle_close(clock_reactor):
    class Polite(Recorder):
        def close(self):
            if not self.closing:
                self.write(b"bye\n")
            super().close()

        def handle_close(self):
            self.events.append("handle_close")
            super().handle_close()

    h, peer = tls_pair(clock_reactor, Polite, handshake_timeout=30)
    handshake(clock_reactor, h, peer)
    h.close()
    drive(clock_reactor, peer, lambda: peer.close_notified)
    assert peer.app == b"bye\n"
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.send_raw(peer.outgoing.read())
    run_until(clock_reactor, lambda: h.lost)
    assert h.lost == [None] and h.events[-2:] == ["handle_close", "lost"]
    assert timers(clock_reactor) == 0
    peer.sock.close()


def test_exception_in_handshake_completed_goes_to_handle_error_and_on_error(reactor):
    class Broken(Recorder):
        def handshake_completed(self):
            raise RuntimeError("bad hook")

    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    ok, errors = [], []
    connector = connect_tcp(reactor, "127.0.0.1", listener.address[1], Broken,
                            ssl_context=client_ctx(), server_hostname="localhost",
                            on_connect=ok.append, on_error=errors.append)
    run_until(reactor, lambda: errors)
    assert ok == [] and len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert connector.handler.lost == errors
    run_until(reactor, lambda: not listener.connections)
    listener.close()
    assert timers(reactor) == 0
