"""TLS under StreamHandler: stdlib clients over loopback, and a memory-BIO client driven by hand
where the test must decide how the ciphertext is cut (records per segment, bytes per read).

Every fault of issue 6 is a test here; each in-process test ends by checking that no timer and no
handler is left behind (`assert_clean`; `assert_served_clean` for a reactor thread's listener)."""
from __future__ import annotations

import hashlib
import os
import selectors
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from reactor import (Reactor, StreamHandler, TLSStreamHandler, connect_tcp, connect_unix, listen_tcp,
                     listen_unix, start_tls)
from reactor.testing import FakeClock, recv_exactly, run_until, stream_pair
from reactor.tls import tls_variant

CERTS = Path(__file__).resolve().parents[1] / "certs"


def cert(name: str) -> tuple[str, str]:
    return str(CERTS / f"{name}.pem"), str(CERTS / f"{name}.key")


def server_ctx(name: str = "server", client_ca: str | None = None,
               alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*cert(name))
    if client_ca:
        ctx.load_verify_locations(str(CERTS / f"{client_ca}.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def client_ctx(ca: str = "ca", certificate: str | None = None,
               alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CERTS / f"{ca}.pem"))
    if certificate:
        ctx.load_cert_chain(*cert(certificate))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class Recorder(StreamHandler):
    """Records every callback in order; echoes when told to."""

    echo = False
    keep_open_on_eof = False

    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.events, self.data, self.lost = [], bytearray(), []

    def connection_made(self):
        self.events.append("made")

    def handshake_completed(self):
        self.events.append("handshake")
        self.alpn = self.ssl_object.selected_alpn_protocol()
        self.peer_cert = self.ssl_object.getpeercert()

    def data_received(self, data):
        self.data += data
        if self.echo:
            self.write(data)

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open_on_eof

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost.append(exc)


class Echo(Recorder):
    echo = True


def assert_clean(reactor: Reactor, handlers: int = 0) -> None:
    """No timer and no handler left behind (handlers: those the test still expects, listeners)."""
    reactor.run_once(0)
    stats = reactor.stats()
    assert stats["timers"] == 0, stats
    assert stats["handlers"] == handlers, reactor.handlers


class BIOPeer:
    """A TLS client (or server) over a real socket whose ciphertext the test moves by hand."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext | None = None,
                 server_hostname: str | None = "localhost", server_side: bool = False):
        sock.setblocking(False)
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = ctx or (server_ctx() if server_side else client_ctx())
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side,
                                server_hostname=None if server_side else server_hostname)
        self.app, self.raw = bytearray(), bytearray()
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
            self.raw += data
            self.incoming.write(data)

    def step(self, send: bool = True) -> None:
        """Read what arrived, go on with the handshake or read application data, send what the
        TLS object wrote (unless send is False: the test then takes it from self.outgoing)."""
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
                except ssl.SSLZeroReturnError:    # close_notify after we sent ours
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
                try:
                    self.send_raw(out)
                except OSError as exc:
                    self.error = exc


def drive(reactor: Reactor, peer: BIOPeer, predicate, timeout: float = 5.0):
    def step():
        peer.step()
        return predicate()
    return run_until(reactor, step, timeout)


def tls_pair(reactor: Reactor, handler=Recorder, ctx: ssl.SSLContext | None = None,
             peer_ctx: ssl.SSLContext | None = None, **options):
    """A server-side TLS handler on one end of a loopback TCP pair, a BIOPeer on the other."""
    client, server = stream_pair(socket.AF_INET)
    h = start_tls(handler(server), ctx or server_ctx(), server_side=True, **options)
    reactor.add(h)
    return h, BIOPeer(client, peer_ctx)


def handshake(reactor: Reactor, h, peer: BIOPeer) -> None:
    drive(reactor, peer, lambda: peer.handshaken and "handshake" in h.events)


@pytest.fixture
def clock_reactor():
    clock = FakeClock()
    r = Reactor(clock=clock)
    r.clock = clock
    yield r
    if not r.closed:
        r.close()


def serve(rt, factory=Echo, ctx: ssl.SSLContext | None = None, **options):
    """A TLS listener on the reactor thread; returns (address, handlers made so far)."""
    made = []

    def build(sock, addr):
        h = factory(sock, addr)
        made.append(h)
        return h
    listener = rt.call(listen_tcp, rt.reactor, "127.0.0.1", 0, build,
                       ssl_context=ctx or server_ctx(), **options)
    return listener.address, made


def assert_served_clean(rt, made: list, timeout: float = 5.0) -> None:
    """assert_clean for serve(): once every handler made has had its connection_lost, only the
    listener is left on the reactor thread, and no timer."""
    rt.wait_for(lambda: made and all(h.lost for h in made), timeout)
    stats = rt.call(rt.reactor.stats)
    assert (stats["handlers"], stats["timers"]) == (1, 0), stats


def tls_connect(address, ctx: ssl.SSLContext | None = None, hostname: str = "localhost",
                timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=timeout)
    try:
        return (ctx or client_ctx()).wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


# -- stdlib clients over loopback ---------------------------------------------------------------

def test_stdlib_client_echo_over_tls13(rt):
    address, made = serve(rt)
    with tls_connect(address) as tls:
        assert tls.version() == "TLSv1.3"
        for size in (1, 1024, 100_000):
            payload = os.urandom(size)
            tls.sendall(payload)
            assert recv_exactly(tls, size) == payload
    h = made[0]
    rt.wait_for(lambda: "lost" in h.events)
    assert h.events[:2] == ["made", "handshake"]
    assert isinstance(h, TLSStreamHandler) and isinstance(h, Echo)
    assert rt.call(lambda: rt.reactor.stats()["timers"]) == 0


def test_stdlib_client_over_tls12(rt):
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    address, made = serve(rt)
    with tls_connect(address, ctx) as tls:
        assert tls.version() == "TLSv1.2"
        tls.sendall(b"twelve")
        assert recv_exactly(tls, 6) == b"twelve"
        tls.unwrap().close()
    rt.wait_for(lambda: made[0].lost == [None])
    assert_served_clean(rt, made)


def test_alpn_negotiated_and_sni_callback_chooses_the_context(rt):
    seen = []
    localhost = server_ctx(alpn=["h2", "http/1.1"])
    default = server_ctx("other-server")             # signed by a CA the client does not trust

    def pick(ssl_object, server_name, ctx):
        seen.append(server_name)
        if server_name == "localhost":
            ssl_object.context = localhost
        return None
    default.sni_callback = pick
    address, made = serve(rt, ctx=default)
    with tls_connect(address, client_ctx(alpn=["http/1.1"])) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"sni")
        assert recv_exactly(tls, 3) == b"sni"
    assert seen == ["localhost"]
    rt.wait_for(lambda: made[0].lost)
    assert made[0].alpn == "http/1.1"
    with pytest.raises(ssl.SSLCertVerificationError):   # without SNI the untrusted default serves
        tls_connect(address, hostname="127.0.0.1").close()
    assert_served_clean(rt, made)


def test_client_certificate_required_and_given(rt):
    address, made = serve(rt, ctx=server_ctx(client_ca="ca"))
    with tls_connect(address, client_ctx(certificate="client")) as tls:
        tls.sendall(b"mutual")
        assert recv_exactly(tls, 6) == b"mutual"
    rt.wait_for(lambda: made[0].lost)
    subject = dict(field[0] for field in made[0].peer_cert["subject"])
    assert subject["commonName"] == "Reactor Test Client"
    assert_served_clean(rt, made)


@pytest.mark.parametrize("certificate", [None, "other-client"], ids=["missing", "untrusted"])
def test_client_certificate_missing_or_untrusted_is_refused(rt, certificate):
    address, made = serve(rt, ctx=server_ctx(client_ca="ca"))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        # TLS 1.3: the client's handshake ends before the server judged its certificate; the
        # server's alert (certificate required / unknown ca) arrives at the next read.
        with tls_connect(address, client_ctx(certificate=certificate)) as tls:
            tls.sendall(b"let me in")
            if tls.recv(100) == b"":
                raise ConnectionResetError("closed without an alert")
    rt.wait_for(lambda: made and made[0].lost)
    h = made[0]
    assert isinstance(h.lost[0], ssl.SSLError) and h.data == b""
    assert "handshake" not in h.events
    assert_served_clean(rt, made)


def test_client_verifying_the_wrong_hostname_fails_and_the_server_cleans_up(rt):
    address, made = serve(rt)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
        tls_connect(address, hostname="wrong.example")
    rt.wait_for(lambda: made and made[0].lost)
    assert isinstance(made[0].lost[0], ssl.SSLError) and made[0].data == b""
    assert rt.call(lambda: (rt.reactor.stats()["timers"], len(rt.reactor.handlers))) == (0, 1)


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096),
                                     b"\x16\x03\x01\x00\x05hello" + os.urandom(64)],
                         ids=["plaintext-http", "random-bytes", "bad-handshake-record"])
def test_garbage_instead_of_a_client_hello(rt, garbage):
    address, made = serve(rt)
    with socket.create_connection(address, timeout=5) as raw:
        raw.sendall(garbage)
        try:
            while raw.recv(4096):       # an alert perhaps, then EOF (or a reset)
                pass
        except ConnectionResetError:
            pass
    rt.wait_for(lambda: made and made[0].lost)
    assert isinstance(made[0].lost[0], (ssl.SSLError, ConnectionError))
    assert made[0].data == b"" and made[0].events == ["made", "lost"]
    with tls_connect(address) as tls:    # the server goes on serving
        tls.sendall(b"still here")
        assert recv_exactly(tls, 10) == b"still here"
    assert_served_clean(rt, made)


def test_silent_client_is_reset_at_the_handshake_deadline_while_others_are_served(rt):
    address, made = serve(rt, ssl_handshake_timeout=0.5)
    t0 = time.monotonic()
    with socket.create_connection(address, timeout=10) as silent:
        for _ in range(3):               # others are served meanwhile
            with tls_connect(address) as tls:
                tls.sendall(b"ping")
                assert recv_exactly(tls, 4) == b"ping"
        try:
            assert silent.recv(1) == b""
        except ConnectionResetError:
            pass
        elapsed = time.monotonic() - t0
    assert 0.4 < elapsed < 5
    rt.wait_for(lambda: made[0].lost)
    assert isinstance(made[0].lost[0], TimeoutError) and made[0].events == ["made", "lost"]
    assert_served_clean(rt, made)


def test_ten_megabytes_written_before_the_handshake_arrive_whole(rt):
    payload = os.urandom(10 * 1024 * 1024)

    class Sender(Recorder):
        def connection_made(self):
            super().connection_made()
            self.write(payload[:1000])            # before the handshake: held
            self.write(memoryview(payload)[1000:])
            self.close()                          # flush, close_notify, wait

    address, made = serve(rt, Sender)
    got = bytearray()
    with tls_connect(address, timeout=20) as tls:
        while data := tls.recv(1 << 20):          # b"" on the server's close_notify
            got += data
        tls.unwrap().close()
    assert len(got) == len(payload) and hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    rt.wait_for(lambda: made[0].lost)
    assert made[0].lost == [None]
    assert_served_clean(rt, made)


def test_ten_megabytes_echoed_through_flow_control(rt):
    payload = os.urandom(10 * 1024 * 1024)
    address, made = serve(rt)
    with tls_connect(address, timeout=20) as tls:
        got = exchange(tls, payload)
    assert len(got) == len(payload) and got == payload
    rt.wait_for(lambda: made[0].lost)
    assert made[0].data == payload
    assert_served_clean(rt, made)


def exchange(tls: ssl.SSLSocket, payload: bytes, timeout: float = 30.0) -> bytes:
    """Send payload and read as much back, from one thread (an SSL object must not be read and
    written from two threads at once), reading whenever a write would block."""
    tls.setblocking(False)
    view, sent, got = memoryview(payload), 0, bytearray()
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(tls, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while len(got) < len(payload):
            assert time.monotonic() < deadline, f"{len(got)} of {len(payload)} bytes back"
            events = sel.select(1) if not tls.pending() else [(None, selectors.EVENT_READ)]
            for _, mask in events:
                if mask & selectors.EVENT_WRITE and sent < len(payload):
                    try:
                        sent += tls.send(view[sent:sent + 256 * 1024])
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        pass
                    if sent == len(payload):
                        sel.modify(tls, selectors.EVENT_READ)
                try:
                    data = tls.recv(1 << 20)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    continue
                assert data, "early EOF"
                got += data
    tls.setblocking(True)
    return bytes(got)


def test_many_connections_come_and_go_without_leaking(rt):
    address, made = serve(rt)
    fds_before = len(os.listdir("/proc/self/fd"))
    for i in range(60):
        with tls_connect(address) as tls:
            if i % 3 == 0:
                tls.sendall(b"x")
                assert recv_exactly(tls, 1) == b"x"
                tls.unwrap().close()               # clean close both ways
            elif i % 3 == 1:
                tls.sendall(b"y")                  # then a truncating close
    rt.wait_for(lambda: len(made) == 60 and all(h.lost for h in made), timeout=20)
    stats = rt.call(rt.reactor.stats)
    assert (stats["handlers"], stats["timers"]) == (1, 0)
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    assert sum(h.lost == [None] for h in made) == 20
    # the others: a truncation, or a reset (or EPIPE) when the client closed with our bytes
    # (the echo, the session tickets) unread
    assert sum(isinstance(h.lost[0], (ssl.SSLEOFError, ConnectionError)) for h in made) == 40


# -- the memory-BIO client: segmentation chosen by the test -------------------------------------

def test_two_records_in_one_segment_are_both_delivered_at_once(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    peer.tls.write(b"first record,")
    peer.tls.write(b"second record")
    peer.send_raw(peer.outgoing.read())           # both records in one send
    run_until(reactor, lambda: h.bytes_in >= 1)
    deadline = time.monotonic() + 5
    while len(h.data) < 26 and time.monotonic() < deadline:
        reactor.run_once(0.05)
    assert h.data == b"first record,second record"
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert_clean(reactor)


def test_one_record_arriving_a_byte_at_a_time(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    peer.tls.write(b"split into many segments")
    record = peer.outgoing.read()
    start = h.bytes_in
    for i, byte in enumerate(record):
        assert h.data == b""                      # nothing before the record is whole
        peer.send_raw(bytes([byte]))
        run_until(reactor, lambda: h.bytes_in == start + i + 1)
    assert h.data == b"split into many segments"
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert_clean(reactor)


@pytest.mark.parametrize("seed", range(5))
def test_a_whole_session_cut_at_random_points_arrives_whole_and_ends_cleanly(reactor, seed):
    import random
    rng = random.Random(seed)
    h, peer = tls_pair(reactor, Echo)
    handshake(reactor, h, peer)
    messages = [os.urandom(rng.choice((1, 100, 5000, 40000))) for _ in range(20)]
    for message in messages:
        peer.tls.write(message)
    try:
        peer.tls.unwrap()                          # close_notify last
    except ssl.SSLWantReadError:
        pass
    wire = peer.outgoing.read()
    expected = b"".join(messages)
    pos = 0
    while pos < len(wire):
        cut = pos + rng.randint(1, 3000)
        peer.send_raw(wire[pos:cut])
        pos = cut
        reactor.run_once(0)
        peer.pull()                                # the echo must not fill the pipe back
    run_until(reactor, lambda: peer.pull() or h.lost)
    assert h.data == expected and h.lost == [None] and "eof" in h.events
    peer.sock.close()
    assert_clean(reactor)


def test_records_left_in_the_bio_when_the_app_pauses_come_on_resume_without_socket_input(reactor):
    class Pauser(Recorder):
        max_read = 4                               # one 4-byte piece per data_received

        def data_received(self, data):
            super().data_received(data)
            self.pause_reading()

    h, peer = tls_pair(reactor, Pauser)
    handshake(reactor, h, peer)
    peer.tls.write(b"aaaabbbbcccc")
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.data)
    assert h.data == b"aaaa" and not h.wants_to_receive()
    for expected in (b"aaaabbbb", b"aaaabbbbcccc"):
        h.resume_reading()                         # the rest sits in OpenSSL, not in the socket
        reactor.run_once(0)
        assert h.data == expected
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_data_and_close_before_the_handshake_finishes_deliver_nothing(reactor):
    h, peer = tls_pair(reactor)
    peer.step(send=False)
    hello = peer.outgoing.read()
    peer.send_raw(hello + b"GET /secret HTTP/1.1\r\n\r\n")   # plaintext riding with the hello
    peer.sock.shutdown(socket.SHUT_WR)
    run_until(reactor, lambda: h.lost)
    assert h.data == b"" and h.events == ["made", "lost"]
    assert isinstance(h.lost[0], ssl.SSLError)
    peer.sock.close()
    assert_clean(reactor)


def test_application_data_without_the_client_finished_is_never_delivered(reactor):
    h, peer = tls_pair(reactor)
    peer.step(send=False)
    peer.send_raw(peer.outgoing.read())            # ClientHello
    run_until(reactor, lambda: peer.pull() or peer.incoming.pending)
    run_until(reactor, lambda: peer.step(send=False) or peer.handshaken)
    peer.outgoing.read()                           # the client's Finished: never sent
    peer.tls.write(b"secret before Finished")
    peer.send_raw(peer.outgoing.read())
    peer.sock.shutdown(socket.SHUT_WR)
    run_until(reactor, lambda: h.lost)
    assert h.data == b"" and "handshake" not in h.events
    assert isinstance(h.lost[0], ssl.SSLError)
    peer.sock.close()
    assert_clean(reactor)


def test_disconnect_mid_handshake(reactor):
    h, peer = tls_pair(reactor)
    peer.step(send=False)
    hello = peer.outgoing.read()
    peer.send_raw(hello[: len(hello) // 2])
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert h.events == ["made", "lost"] and h.data == b""
    assert isinstance(h.lost[0], (ssl.SSLEOFError, ConnectionError))
    assert_clean(reactor)


def test_handshake_timeout_with_a_controlled_clock(clock_reactor):
    h, peer = tls_pair(clock_reactor, handshake_timeout=10)
    clock_reactor.clock.advance(9, clock_reactor)
    assert not h.lost
    clock_reactor.clock.advance(2, clock_reactor)
    assert h.events == ["made", "lost"] and isinstance(h.lost[0], TimeoutError)
    peer.sock.close()
    assert_clean(clock_reactor)


def test_handshake_timer_is_cancelled_once_the_handshake_is_done(clock_reactor):
    h, peer = tls_pair(clock_reactor, handshake_timeout=10)
    handshake(clock_reactor, h, peer)
    assert clock_reactor.stats()["timers"] == 0
    clock_reactor.clock.advance(100, clock_reactor)
    assert not h.lost
    peer.sock.close()
    run_until(clock_reactor, lambda: h.lost)
    assert_clean(clock_reactor)


def test_writes_made_before_the_handshake_are_held_not_sent_in_plaintext(reactor):
    h, peer = tls_pair(reactor)
    h.write(b"PLAINTEXT-MARKER one,")
    h.write(bytearray(b"PLAINTEXT-MARKER two"))
    assert h.write_buffer_size == 41
    drive(reactor, peer, lambda: peer.app == b"PLAINTEXT-MARKER one,PLAINTEXT-MARKER two")
    assert b"PLAINTEXT" not in peer.raw           # only ciphertext crossed the wire
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert_clean(reactor)


def test_a_write_blocked_on_a_read_is_sent_after_the_next_read_even_while_paused(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    real_write, calls = h._tls_write, []

    def renegotiating(data):                       # as SSL_write during a renegotiation
        calls.append(bytes(data))
        if len(calls) == 1:
            raise ssl.SSLWantReadError("want read")
        return real_write(data)
    h._tls_write = renegotiating
    h.write(b"first,")
    h.write(b"second")
    h.pause_reading()                              # the app paused: the read must happen anyway
    assert h.wants_to_receive() and peer.app == b""
    peer.tls.write(b"ping")
    drive(reactor, peer, lambda: peer.app == b"first,second")
    assert calls == [b"first,", b"first,second"]
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


# -- closing ------------------------------------------------------------------------------------

def test_server_closes_cleanly_and_the_peer_answers_close_notify(clock_reactor):
    h, peer = tls_pair(clock_reactor)
    handshake(clock_reactor, h, peer)
    h.write(b"last words")
    h.close()
    drive(clock_reactor, peer, lambda: peer.close_notified)
    assert peer.app == b"last words"
    try:
        peer.tls.unwrap()                          # our close_notify in answer
    except ssl.SSLWantReadError:
        pass
    peer.send_raw(peer.outgoing.read())
    run_until(clock_reactor, lambda: h.lost)       # no clock advance: the answer ended it
    assert h.lost == [None] and "eof" not in h.events
    peer.sock.close()
    assert_clean(clock_reactor)


def test_client_closes_cleanly_and_the_server_answers(clock_reactor):
    h, peer = tls_pair(clock_reactor, Echo)
    handshake(clock_reactor, h, peer)
    peer.tls.write(b"bye")
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.send_raw(peer.outgoing.read())
    drive(clock_reactor, peer, lambda: h.lost and peer.close_notified)
    assert h.data == b"bye" and h.lost == [None] and h.events[-2:] == ["eof", "lost"]
    drive(clock_reactor, peer, lambda: peer.eof)   # and then TCP EOF
    peer.sock.close()
    assert_clean(clock_reactor)


def test_peer_that_never_answers_close_notify_is_left_after_a_bounded_wait(clock_reactor):
    h, peer = tls_pair(clock_reactor)
    handshake(clock_reactor, h, peer)
    h.close()
    drive(clock_reactor, peer, lambda: peer.close_notified)
    clock_reactor.clock.advance(h.linger_timeout - 0.5, clock_reactor)
    assert not h.lost
    clock_reactor.clock.advance(1, clock_reactor)
    assert h.lost == [None]
    peer.sock.close()
    assert_clean(clock_reactor)


def test_tcp_close_without_close_notify_is_reported_as_truncation(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    peer.tls.write(b"complete record")
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.data)
    peer.sock.close()                              # no close_notify
    run_until(reactor, lambda: h.lost)
    assert h.data == b"complete record" and "eof" not in h.events
    assert isinstance(h.lost[0], ssl.SSLEOFError)
    assert_clean(reactor)


def test_tcp_close_in_the_middle_of_a_record_is_truncation_and_delivers_nothing_of_it(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    peer.tls.write(b"never whole")
    record = peer.outgoing.read()
    peer.send_raw(record[:-3])
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert h.data == b"" and isinstance(h.lost[0], ssl.SSLEOFError)
    assert_clean(reactor)


def test_write_eof_sends_close_notify_and_keeps_reading(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    h.write(b"half")
    h.write_eof()
    with pytest.raises(RuntimeError):
        h.write(b"too late")
    drive(reactor, peer, lambda: peer.close_notified)
    assert peer.app == b"half"
    peer.tls.write(b"they go on")                  # TLS 1.3: close_notify closes one direction
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.data == b"they go on")
    try:
        peer.tls.unwrap()
    except ssl.SSLWantReadError:
        pass
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.lost)
    assert h.lost == [None] and "eof" in h.events
    peer.sock.close()
    assert_clean(reactor)


def test_close_before_the_handshake_with_held_writes_flushes_them_after_it(reactor):
    h, peer = tls_pair(reactor)
    h.write(b"said during the handshake")
    h.close()
    drive(reactor, peer, lambda: peer.close_notified)
    assert peer.app == b"said during the handshake"
    peer.sock.close()
    run_until(reactor, lambda: h.lost)
    assert h.lost == [None]
    assert_clean(reactor)


def test_close_during_the_handshake_without_data_ends_at_once(reactor):
    h, peer = tls_pair(reactor)
    h.close()
    assert h.lost == [None]
    peer.step()
    peer.sock.close()
    assert_clean(reactor)


def test_abort_during_the_handshake_cancels_its_timer(clock_reactor):
    h, peer = tls_pair(clock_reactor, handshake_timeout=5)
    assert clock_reactor.stats()["timers"] == 1
    h.abort()
    assert h.lost == [None]
    peer.sock.close()
    assert_clean(clock_reactor)


def test_reactor_close_mid_handshake_leaves_nothing(clock_reactor):
    h, peer = tls_pair(clock_reactor, handshake_timeout=5)
    peer.step()
    clock_reactor.run_once(0.01)
    clock_reactor.close()
    assert h.events == ["made", "lost"]
    peer.sock.close()


# -- the client side: connect_tcp(ssl_context=..., server_hostname=...) --------------------------

def test_our_client_and_our_server_on_one_reactor(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo, ssl_context=server_ctx())
    connected, errors = [], []
    connector = connect_tcp(reactor, "127.0.0.1", listener.address[1], Recorder,
                            ssl_context=client_ctx(), on_connect=connected.append,
                            on_error=errors.append)
    client = run_until(reactor, lambda: connector.handler)
    assert not connected                           # TCP is up, the handshake is not done
    client.write(b"written before the handshake,")
    run_until(reactor, lambda: connected)
    assert connected == [client] and client.tls_handshake_done and not errors
    client.write(b" and after")
    run_until(reactor, lambda: client.data == b"written before the handshake, and after")
    client.close()
    run_until(reactor, lambda: client.lost and not listener.connections)
    assert client.lost == [None]
    assert_clean(reactor, handlers=1)
    listener.close()
    assert_clean(reactor)


@pytest.mark.parametrize("server_cert, hostname", [("server", "wrong.example"),
                                                   ("other-server", None)],
                         ids=["wrong-hostname", "untrusted-ca"])
def test_our_client_refuses_a_server_it_cannot_verify(reactor, server_cert, hostname):
    servers = []

    def build(sock, addr):
        servers.append(Recorder(sock, addr))
        return servers[-1]
    listener = listen_tcp(reactor, "127.0.0.1", 0, build, ssl_context=server_ctx(server_cert))
    connected, errors = [], []
    connector = connect_tcp(reactor, "127.0.0.1", listener.address[1], Recorder,
                            ssl_context=client_ctx(), server_hostname=hostname,
                            on_connect=connected.append, on_error=errors.append)
    run_until(reactor, lambda: errors and servers and servers[0].lost)
    assert not connected and isinstance(errors[0], ssl.SSLCertVerificationError)
    assert connector.error is errors[0] and connector.handler.lost == [errors[0]]
    assert connector.handler.data == b"" and servers[0].data == b""
    listener.close()
    assert_clean(reactor)


def test_our_client_against_a_stdlib_tls_server(reactor):
    ctx = server_ctx()
    with socket.create_server(("127.0.0.1", 0)) as server:
        def serve_one():
            conn, _ = server.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                data = tls.recv(100)
                tls.sendall(data.upper())
                tls.unwrap()
        thread = threading.Thread(target=serve_one, daemon=True)
        thread.start()
        connected = []
        connect_tcp(reactor, "127.0.0.1", server.getsockname()[1], Recorder, ssl_context=client_ctx(),
                    server_hostname="localhost", on_connect=connected.append)
        client = run_until(reactor, lambda: connected and connected[0])
        client.write(b"hello stdlib")
        run_until(reactor, lambda: client.lost)
        thread.join(5)
    assert client.data == b"HELLO STDLIB" and client.events[-2:] == ["eof", "lost"]
    assert client.lost == [None]
    assert_clean(reactor)


def test_tls_over_unix_sockets(reactor, tmp_path):
    path = str(tmp_path / "tls.sock")
    listener = listen_unix(reactor, path, Echo, ssl_context=server_ctx())
    connected = []
    connect_unix(reactor, path, Recorder, ssl_context=client_ctx(), server_hostname="localhost",
                 on_connect=connected.append)
    client = run_until(reactor, lambda: connected and connected[0])
    client.write(b"over a unix socket")
    run_until(reactor, lambda: client.data == b"over a unix socket")
    client.close()
    run_until(reactor, lambda: client.lost and not listener.connections)
    listener.close()
    assert_clean(reactor)
    with pytest.raises(ValueError, match="server_hostname"):
        connect_unix(reactor, path, Recorder, ssl_context=client_ctx())


# -- how a plain class becomes a TLS one --------------------------------------------------------

def test_the_tls_variant_keeps_the_users_overrides_first():
    class Counting(StreamHandler):
        def write(self, data):
            self.count = getattr(self, "count", 0) + 1
            super().write(data)

    variant = tls_variant(Counting)
    assert variant is tls_variant(Counting)        # built once
    mro = variant.__mro__
    assert mro.index(Counting) < mro.index(TLSStreamHandler) < mro.index(StreamHandler)
    assert variant.write is Counting.write
    assert tls_variant(variant) is variant
    assert StreamHandler.handle_receive is not TLSStreamHandler.handle_receive   # plaintext untouched


def test_user_write_override_runs_under_tls(reactor):
    class Counting(Recorder):
        def write(self, data):
            self.count = getattr(self, "count", 0) + 1
            super().write(data)

    h, peer = tls_pair(reactor, Counting)
    handshake(reactor, h, peer)
    h.write(b"counted")
    drive(reactor, peer, lambda: peer.app == b"counted")
    assert h.count == 1
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_private_names_of_the_users_class_do_not_collide_with_the_tls_layer(reactor):
    class Chatty(Recorder):
        """Names a protocol handler may well use for its own handshake (mpconn does)."""

        def _handshake(self, payload):
            raise AssertionError("the TLS layer called the application's _handshake")

        def _fail(self, exc):
            raise AssertionError("the TLS layer called the application's _fail")

        def data_received(self, data):
            super().data_received(data)
            self.write(data.upper())

    h, peer = tls_pair(reactor, Chatty)
    handshake(reactor, h, peer)
    peer.tls.write(b"no collision")
    drive(reactor, peer, lambda: peer.app == b"NO COLLISION")
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_misuse_is_refused(reactor):
    a, b = socket.socketpair()
    with a, b:
        h = reactor.add(Recorder(a))
        with pytest.raises(RuntimeError, match="before the handler is added"):
            start_tls(h, server_ctx(), server_side=True)
        h.abort()
        with pytest.raises(TypeError):
            start_tls(object(), server_ctx(), server_side=True)
        with pytest.raises(ValueError):
            listen_tcp(reactor, "127.0.0.1", 0, Recorder, ssl_context=client_ctx())
        bare = TLSStreamHandler(b)
        reactor.add(bare)                          # added without start_tls: refused, removed
        assert bare not in reactor.handlers
    assert_clean(reactor)


def test_plaintext_listener_makes_plain_handlers(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Recorder)
    with socket.create_connection(listener.address, timeout=5):
        conn = run_until(reactor, lambda: next(iter(listener.connections), None))
        assert type(conn) is Recorder and listener.ssl_context is None
    listener.close()
    reactor.close()


# -- follow-ups of the review (tests/reactor/test_tls_review.py) ---------------------------------

def blocking_writes(h, blocked):
    """Make SSL writes fail with want-read while blocked() is true, as during a renegotiation;
    returns the list of what each attempt offered."""
    real_write, calls = h._tls_write, []

    def renegotiating(data):
        calls.append(bytes(data))
        if blocked():
            raise ssl.SSLWantReadError("want read")
        return real_write(data)
    h._tls_write = renegotiating
    return calls


def test_a_large_write_blocked_on_a_read_is_retried_with_the_same_slice_then_sent_whole(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    calls = blocking_writes(h, lambda: len(calls) == 1)
    payload = os.urandom(1024 * 1024)
    h.write(payload)
    assert len(calls[0]) == h._tls_slice < len(payload)       # one slice tried, not the whole
    assert h.write_buffer_size == len(payload) and h.wants_to_receive()
    peer.tls.write(b"ping")
    drive(reactor, peer, lambda: len(peer.app) == len(payload), timeout=10)
    assert bytes(peer.app) == payload and calls[1] == calls[0]    # OpenSSL saw the same bytes again
    run_until(reactor, lambda: h.data == b"ping")
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_paused_with_a_write_blocked_on_a_read_reads_a_bounded_amount_and_delivers_nothing(reactor):
    from reactor.tls import MAX_UNREAD
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    h.pause_reading()
    release = []
    blocking_writes(h, lambda: not release)
    h.write(b"held")
    payload = os.urandom(1024 * 1024)
    peer.tls.write(payload)
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: not h.wants_to_receive())       # the BIO is full enough
    assert MAX_UNREAD <= h._tls_in.pending < MAX_UNREAD + h.max_read
    assert h.data == b"" and peer.app == b""
    release.append(True)
    h.resume_reading()
    drive(reactor, peer, lambda: len(h.data) == len(payload) and peer.app == b"held", timeout=10)
    assert bytes(h.data) == payload
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_write_eof_after_a_large_write_sends_close_notify_after_the_last_slice(reactor):
    h, peer = tls_pair(reactor)
    handshake(reactor, h, peer)
    payload = os.urandom(4 * 1024 * 1024)
    h.write(payload)
    h.write_eof()
    assert h.write_buffer_size > 0 and not peer.close_notified
    drive(reactor, peer, lambda: peer.close_notified, timeout=10)
    assert bytes(peer.app) == payload
    peer.tls.write(b"still reading")
    peer.send_raw(peer.outgoing.read())
    run_until(reactor, lambda: h.data == b"still reading")
    h.abort()
    peer.sock.close()
    assert_clean(reactor)


def test_a_slow_flush_within_close_timeout_still_gets_its_whole_linger_under_tls(clock_reactor):
    h, peer = tls_pair(clock_reactor)
    handshake(clock_reactor, h, peer)
    payload = os.urandom(4 * 1024 * 1024)
    h.write(payload)
    h.close()
    clock_reactor.clock.advance(h.close_timeout - 1, clock_reactor)   # a slow reader...
    drive(clock_reactor, peer, lambda: peer.close_notified, timeout=10)   # ...reads it all
    assert bytes(peer.app) == payload
    clock_reactor.clock.advance(1 + h.linger_timeout / 4, clock_reactor)  # past close_timeout
    assert h.lost == []
    peer.sock.close()
    run_until(clock_reactor, lambda: h.lost)
    assert h.lost == [None]
    assert_clean(clock_reactor)


def test_a_handle_close_that_skips_super_still_ends_the_tls_layer(clock_reactor):
    class Rude(Recorder):
        def handle_close(self):                    # never reaches TLSStreamHandler's
            self.events.append("rude")
            self.sock.close()

    with socket.create_server(("127.0.0.1", 0)) as silent:
        connected, errors = [], []
        connector = connect_tcp(clock_reactor, "127.0.0.1", silent.getsockname()[1], Rude,
                                ssl_context=client_ctx(), server_hostname="localhost",
                                ssl_handshake_timeout=5, on_connect=connected.append,
                                on_error=errors.append)
        client = run_until(clock_reactor, lambda: connector.handler)
        clock_reactor.clock.advance(6, clock_reactor)
        run_until(clock_reactor, lambda: "rude" in client.events)
        assert connected == [] and len(errors) == 1 and isinstance(errors[0], TimeoutError)
        assert_clean(clock_reactor)


def test_connector_cancel_during_the_tls_handshake_leaves_nothing(clock_reactor):
    listener = listen_tcp(clock_reactor, "127.0.0.1", 0, Recorder, ssl_context=server_ctx())
    connected, errors = [], []
    connector = connect_tcp(clock_reactor, "127.0.0.1", listener.address[1], Recorder,
                            ssl_context=client_ctx(), server_hostname="localhost",
                            ssl_handshake_timeout=5, on_connect=connected.append,
                            on_error=errors.append)
    client = run_until(clock_reactor, lambda: connector.handler)
    connector.cancel()
    assert len(client.lost) == 1 and isinstance(client.lost[0], ConnectionAbortedError)
    connector.cancel()                             # idempotent
    run_until(clock_reactor, lambda: not listener.connections)
    assert connected == [] and errors == []
    listener.close()
    assert_clean(clock_reactor)
