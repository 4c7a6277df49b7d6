"""Regression tests for the review's sixteen findings, one block per finding, numbered as in the review.

Each test turns a reviewer's reproduction into the behaviour the fix promises, and checks it
over real sockets.  Most tests turn the reactor themselves (`run_until`, or `FakeClock.advance`
for timers), so what happens in which turn is under the test's control: several findings are
about two events in *one* batch, which a reactor running in a thread would make a matter of luck.
Only two findings need an error the kernel will not give on demand (accept() failing with
EHOSTUNREACH or EMFILE); there a socket.socket subclass overrides accept() and nothing else.
"""
from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import threading

import pytest

from reactor import (DatagramHandler, EventHandler, Listener, Reactor, StreamHandler, connect_tcp,
                     connect_unix, listen_tcp, listen_unix, parse_networks, peer_allowed)
from reactor.testing import FakeClock, drain_socket, fill_socket, recv_exactly, run_until, stream_pair

SELECTORS = [getattr(selectors, name) for name in ("EpollSelector", "PollSelector", "SelectSelector")
             if hasattr(selectors, name)]


class Echo(StreamHandler):
    def data_received(self, data):
        self.write(data)


class Probe(EventHandler):
    """A recipe-style handler that records its calls, reads what there is, leaves at EOF."""

    def __init__(self, sock, name, calls, on_receive=None):
        sock.setblocking(False)
        self.sock, self.name, self.calls, self.on_receive = sock, name, calls, on_receive

    def fileno(self):
        return self.sock.fileno()

    def wants_to_receive(self):
        return True

    def handle_receive(self):
        self.calls.append(self.name)
        try:
            data = self.sock.recv(64)
        except BlockingIOError:
            data = None
        if self.on_receive is not None:
            self.on_receive()
        if data == b"":
            self.reactor.remove(self)

    def handle_close(self):
        self.sock.close()


@pytest.fixture
def fake():
    """(reactor, clock): a reactor on a FakeClock, closed at teardown."""
    clock = FakeClock()
    r = Reactor(clock=clock)
    yield r, clock
    if not r.closed:
        r.close()


def peer_closed(sock):
    """True once the other side has closed or reset sock; reads and drops pending data."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def echo_roundtrip(reactor, address, family=socket.AF_INET, payload=b"ping"):
    """Connect a stdlib client, and check the server echoes payload (single-threaded)."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        client.setblocking(False)
        got = bytearray()

        def echoed():
            try:
                got.extend(client.recv(64))
            except BlockingIOError:
                pass
            return bytes(got) == payload
        run_until(reactor, echoed, timeout=2)


def take_lowest_fds_below(fd):
    """Occupy every free descriptor below fd, so that the next socket gets fd itself."""
    held = []
    while (spare := os.open(os.devnull, os.O_RDONLY)) != fd:
        assert spare < fd, "descriptor %d is not free" % fd
        held.append(spare)
    os.close(spare)
    return held


# -- 1. a lingering close after write_eof() ------------------------------------------------------

@pytest.mark.timeout(10)
def test_close_after_write_eof_still_lingers_so_the_peer_gets_everything(reactor):
    n = 8 << 20
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # data waits in our send buffer
        client.connect(server.getsockname())
        sock, _ = server.accept()
    with client:
        handler = reactor.add(StreamHandler(sock))
        handler.pause_reading()
        client.sendall(b"q" * 1000)              # input the server never reads: a plain close resets
        handler.write(b"r" * n)
        handler.write_eof()
        handler.close()
        client.setblocking(False)
        got, end = 0, []

        def read_to_the_end():
            nonlocal got
            while True:
                try:
                    data = client.recv(1 << 20)
                except BlockingIOError:
                    return False
                except OSError as exc:
                    end.append(exc)
                    return True
                if not data:
                    end.append("EOF")
                    return True
                got += len(data)
        run_until(reactor, read_to_the_end, timeout=5)
        assert (got, end) == (n, ["EOF"])


# -- 2. a stale epoll event for a reused descriptor -------------------------------------------------
#
# Two handlers are readable in one batch; whichever is dispatched first (epoll reports them in
# readiness order, select and poll in their own) removes the other, whose descriptor number is
# then taken by a new socket.  The batch still holds the removed one's event for that number.

def one_batch_with_a_reused_descriptor(reactor, calls, take_over):
    """Run that batch; take_over(fd) makes the new handler on fd."""
    (a, a_peer), (b, b_peer) = socket.socketpair(), socket.socketpair()
    probes = {}

    def first_one(name):
        def on_receive():
            if len(calls) == 1:
                other = probes["B" if name == "A" else "A"]
                fd = other.fileno()
                reactor.remove(other)           # closes fd, whose event is still in this batch
                take_over(fd)
        return on_receive

    probes["A"] = reactor.add(Probe(a, "A", calls, first_one("A")))
    probes["B"] = reactor.add(Probe(b, "B", calls, first_one("B")))
    a_peer.close()
    b_peer.close()                              # both readable, IN|HUP: HUP also wakes a writer
    reactor.run_once(1)
    reactor.run_once(0)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: s.__name__)
def test_new_handler_on_a_reused_descriptor_gets_no_stale_event(selector):
    reactor = Reactor(selector=selector())
    calls, peers = [], []

    def take_over(fd):
        ours, theirs = socket.socketpair()
        if theirs.fileno() == fd:
            ours, theirs = theirs, ours
        elif ours.fileno() != fd:               # a lower number was free: move ours onto fd
            os.dup2(ours.fileno(), fd, inheritable=False)
            ours.close()
            ours = socket.socket(fileno=fd)
        peers.append(theirs)
        reactor.add(Probe(ours, "C", calls))    # nothing to read on it

    try:
        one_batch_with_a_reused_descriptor(reactor, calls, take_over)
        assert len(calls) == 1 and calls[0] in "AB", calls
    finally:
        reactor.close()
        for s in peers:
            s.close()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("selector", SELECTORS, ids=lambda s: s.__name__)
def test_pending_connector_on_a_reused_descriptor_does_not_report_success(selector, full_backlog):
    reactor = Reactor(selector=selector())
    calls, state = [], {}

    def on_connect(handler):
        try:
            handler.sock.getpeername()
            state["connected"] = "really"
        except OSError as exc:
            state["connected"] = "not connected: %s" % exc

    def take_over(fd):
        held = take_lowest_fds_below(fd)
        try:
            state["connector"] = connect_tcp(reactor, *full_backlog, StreamHandler, timeout=5,
                                             on_connect=on_connect,
                                             on_error=lambda exc: state.update(error=exc))
        finally:
            for spare in held:
                os.close(spare)
        state["reused"] = state["connector"].fileno() == fd

    try:
        one_batch_with_a_reused_descriptor(reactor, calls, take_over)
        assert len(calls) == 1 and state["reused"]         # the scenario happened as meant
        connector = state["connector"]
        assert "connected" not in state, state["connected"]
        assert connector.handler is None and connector.error is None
    finally:
        reactor.close()


@pytest.mark.timeout(10)
def test_connector_reports_success_only_with_a_connected_socket(reactor):
    peers = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        def on_connect(handler):
            peers.append(handler.sock.getpeername())   # raises (and fails the test) if not connected
        connect_tcp(reactor, *server.getsockname(), StreamHandler, timeout=5, on_connect=on_connect)
        run_until(reactor, lambda: peers, timeout=2)
        assert peers == [server.getsockname()]
        server.accept()[0].close()


# -- 3. the listener survives per-peer failures ----------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("options", [{"allow": ["10.0.0.0/8"]},
                                     {"allow": ["10.0.0.0/8"], "deny": ["192.168.0.0/16"]}])
def test_unix_listener_refusing_a_unix_peer_closes_it_and_keeps_listening(reactor, tmp_path, options):
    path = str(tmp_path / "sock")
    listener = listen_unix(reactor, path, Echo, **options)
    for n in (1, 2):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(path)                    # the second one fails if the listener died
            run_until(reactor, lambda: peer_closed(client), timeout=2)    # closed, not leaked
            assert listener in reactor.handlers and listener.refused == n


@pytest.mark.timeout(10)
def test_factory_that_raises_costs_one_connection_not_the_listener(reactor, caplog):
    caplog.set_level(logging.WARNING)
    built = []

    def factory(sock, addr):
        built.append(addr)
        if len(built) == 1:
            raise ValueError("factory exploded for this peer")
        return Echo(sock, addr)

    listener = listen_tcp(reactor, "127.0.0.1", 0, factory)
    with socket.create_connection(listener.address, timeout=5) as first:
        run_until(reactor, lambda: peer_closed(first), timeout=2)
    assert "factory exploded for this peer" in caplog.text
    assert listener in reactor.handlers
    echo_roundtrip(reactor, listener.address)


class FailingAccept(socket.socket):
    """A listening socket whose next accept() calls fail with the given errnos, then work."""

    def __init__(self, *args, errors=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.errors = list(errors)

    def accept(self):
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, os.strerror(code))
        return super().accept()


def failing_listener(reactor, factory, errors):
    sock = FailingAccept(socket.AF_INET, socket.SOCK_STREAM, errors=errors)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return reactor.add(Listener(sock, factory))


# accept(2), Linux notes: these are pending network errors of the new socket, "treat them like EAGAIN".
ACCEPT_NETWORK_ERRORS = [getattr(errno, name) for name in (
    "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "EHOSTDOWN", "ENONET", "ENOPROTOOPT", "EOPNOTSUPP")
    if hasattr(errno, name)]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("code", ACCEPT_NETWORK_ERRORS, ids=errno.errorcode.get)
def test_accept_network_errors_are_skipped(reactor, code):
    listener = failing_listener(reactor, Echo, [code])
    echo_roundtrip(reactor, listener.address)
    assert listener in reactor.handlers and not listener.sock.errors


@pytest.mark.timeout(10)
def test_listener_closed_from_connection_made_logs_no_error(reactor, caplog):
    caplog.set_level(logging.WARNING)

    class ClosesTheListener(Echo):
        def connection_made(self):
            self.listener.close()

    listener = listen_tcp(reactor, "127.0.0.1", 0, ClosesTheListener)
    with socket.create_connection(listener.address, timeout=5) as client:
        run_until(reactor, lambda: listener not in reactor.handlers, timeout=2)
        reactor.run_once(0)
        assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
        client.sendall(b"still served")              # the connection outlives its listener
        got = bytearray()
        run_until(reactor, lambda: got.extend(drain_socket(client)) or got == b"still served",
                  timeout=2)


# -- 4. a timer cancelled by an earlier timer of the same turn ---------------------------------------

@pytest.mark.timeout(10)
def test_timer_cancelled_by_an_earlier_timer_in_the_same_turn_does_not_run(fake):
    reactor, clock = fake
    fired = []
    reactor.call_later(1, lambda: (fired.append("first"), second.cancel()))
    second = reactor.call_later(1, fired.append, "second")
    clock.advance(1, reactor)
    clock.advance(1, reactor)
    assert fired == ["first"] and second.cancelled


# -- 5. Reactor.close() and handlers added during it -------------------------------------------------

@pytest.mark.timeout(10)
def test_handler_added_from_connection_lost_during_close_does_not_survive_it(caplog):
    caplog.set_level(logging.CRITICAL)      # a refused add() may be logged; that is allowed
    reactor = Reactor()
    sockets = []

    refused = []

    class Reconnecting(StreamHandler):
        def connection_lost(self, exc):
            if len(sockets) < 3:            # bounded, in case add() were accepted
                ours, theirs = socket.socketpair()
                sockets.append((ours, theirs))
                try:
                    self.reactor.add(Reconnecting(ours))
                except RuntimeError as err:
                    refused.append(err)     # the caller keeps its socket and closes it
                    ours.close()

    first, first_peer = socket.socketpair()
    reactor.add(Reconnecting(first))
    try:
        reactor.close()
        assert reactor.closed and not reactor.handlers
        assert sockets, "connection_lost did not run"
        assert len(refused) == len(sockets) == 1        # refused at once: close() cannot loop
    finally:
        first_peer.close()
        for ours, theirs in sockets:
            ours.close()
            theirs.close()


# -- 6. the EMFILE backoff timer after the listener closed -------------------------------------------

def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(10)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_backoff_ending_after_close_reopens_no_spare_descriptor(fake):
    reactor, clock = fake
    listener = failing_listener(reactor, Echo, [errno.EMFILE])
    with socket.create_connection(listener.address, timeout=5) as client:
        run_until(reactor, lambda: peer_closed(client), timeout=2)    # shed during the backoff
        listener.close()                        # e.g. SIGTERM arrives during the backoff
        before = open_fds()
        clock.advance(listener.backoff + 1, reactor)
        clock.advance(1, reactor)
        assert open_fds() == before
        assert reactor.stats()["timers"] == 0


# -- 7. idle_timeout ---------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_idle_timeout_keeps_a_subclass_handle_receive(reactor):
    calls, data = [], []

    class Custom(StreamHandler):
        idle_timeout = 30

        def handle_receive(self):
            calls.append("handle_receive")
            super().handle_receive()

        def data_received(self, d):
            data.append(d)

    ours, peer = socket.socketpair()
    with peer:
        reactor.add(Custom(ours))
        peer.send(b"x")
        run_until(reactor, lambda: data, timeout=1)
        assert calls and data == [b"x"]


class Idle(StreamHandler):
    idle_timeout = 10
    lost = None

    def connection_lost(self, exc):
        self.lost = self.reactor.time()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("direction", ["we write", "peer writes"])
def test_steady_traffic_is_never_idle(fake, direction):
    reactor, clock = fake
    ours, peer = socket.socketpair()
    with peer:
        handler = reactor.add(Idle(ours))
        for _ in range(30):
            if direction == "we write":
                handler.write(b"tick\n")        # the kernel takes it at once: no handle_send
                drain_socket(peer)
            else:
                peer.send(b"tick\n")
            clock.advance(1, reactor)
            assert handler.lost is None and handler in reactor.handlers, clock.now - 1000


@pytest.mark.timeout(10)
@pytest.mark.parametrize("last_activity", ["added", "read", "write"])
def test_silent_connection_closes_within_a_quarter_past_idle_timeout(fake, last_activity):
    reactor, clock = fake
    ours, peer = socket.socketpair()
    received = []
    with peer:
        handler = reactor.add(Idle(ours))
        handler.data_received = received.append
        clock.advance(3, reactor)
        if last_activity == "read":
            peer.send(b"x")
            run_until(reactor, lambda: received, timeout=1)
        elif last_activity == "write":
            handler.write(b"x")
            assert recv_exactly(peer, 1) == b"x"
        last = clock.now if last_activity != "added" else clock.now - 3
        idle = Idle.idle_timeout
        while not peer_closed(peer) and clock.now < last + 3 * idle:
            clock.advance(0.5, reactor)
        closed_after = clock.now - last
        assert idle <= closed_after <= 1.25 * idle + 1


@pytest.mark.timeout(10)
def test_idle_timed_out_that_keeps_the_connection_is_called_again(fake):
    reactor, clock = fake
    calls = []

    class Patient(Idle):
        def idle_timed_out(self):
            calls.append(clock.now)             # and do not close

    ours, peer = socket.socketpair()
    with peer:
        handler = reactor.add(Patient(ours))
        start, idle = clock.now, Patient.idle_timeout
        while len(calls) < 3 and clock.now < start + 3 * (1.25 * idle + 1):
            clock.advance(0.5, reactor)
        assert len(calls) == 3, calls
        gaps = [b - a for a, b in zip([start] + calls, calls)]
        assert all(idle <= gap <= 1.25 * idle + 1 for gap in gaps), gaps
        handler.close()
        calls_before_close = len(calls)
        peer.close()                            # let the lingering close finish
        for _ in range(8 * idle):
            clock.advance(0.5, reactor)
        assert handler.lost is not None
        assert len(calls) == calls_before_close, calls


# -- 8. no reads for a handler closed or paused earlier in the batch ----------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("action", ["close", "pause_reading"])
@pytest.mark.parametrize("event", ["data", "eof"])
def test_handler_closed_or_paused_earlier_in_the_batch_gets_no_read(reactor, action, event):
    calls = []

    class Twin(StreamHandler):
        other = None

        def data_received(self, data):
            calls.append((self.name, "data"))
            self.act()

        def eof_received(self):
            calls.append((self.name, "eof"))
            self.act()
            return True

        def act(self):
            if len(calls) == 1:                 # whichever runs first acts on the other
                getattr(self.other, action)()

    pairs = [socket.socketpair(), socket.socketpair()]
    twins = []
    for name, (ours, _) in zip("ab", pairs):
        twin = reactor.add(Twin(ours))
        twin.name = name
        fill_socket(ours)
        twin.write(b"pending")                  # a queue: close() waits for the flush
        twins.append(twin)
    twins[0].other, twins[1].other = twins[1], twins[0]
    try:
        for _, peer in pairs:
            if event == "data":
                peer.send(b"x")
            else:
                peer.shutdown(socket.SHUT_WR)
        run_until(reactor, lambda: calls, timeout=2)
        reactor.run_once(0)
        reactor.run_once(0)
        assert len(calls) == 1, calls
    finally:
        for _, peer in pairs:
            peer.close()


# -- 9. a connect that raises at once ------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_connect_error_raised_by_connect_itself_goes_to_on_error(reactor, caplog):
    caplog.set_level(logging.WARNING)
    errors = []
    connector = connect_unix(reactor, "/tmp/" + "x" * 200, StreamHandler, timeout=1,
                             on_error=errors.append)       # longer than sun_path's 108 bytes
    run_until(reactor, lambda: errors, timeout=1)
    reactor.run_once(0)
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert connector.error is errors[0]
    assert connector not in reactor.handlers and connector.sock.fileno() == -1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- 10. a repr() that raises ------------------------------------------------------------------------

class BadRepr:
    def __call__(self):
        self.ran = True

    def __repr__(self):
        raise RuntimeError("repr of a callback")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", ["handler", "callback", "timer"])
def test_a_repr_that_raises_does_not_escape_run_once(reactor, case):
    reactor.stats()                             # resets the slowest-callback record
    if case == "handler":
        calls = []

        class Unprintable(Probe):
            def __repr__(self):
                raise OSError("repr needs a live socket")

        ours, peer = socket.socketpair()
        with peer:
            reactor.add(Unprintable(ours, "h", calls))
            peer.send(b"x")
            reactor.run_once(1)
            assert calls == ["h"]
    else:
        callback = BadRepr()
        if case == "callback":
            reactor.call_soon(callback)
        else:
            reactor.call_later(0, callback)
        run_until(reactor, lambda: getattr(callback, "ran", False), timeout=1)


# -- 11. DatagramHandler errors ----------------------------------------------------------------------

class StopsOnError(DatagramHandler):
    def __init__(self, sock):
        super().__init__(sock)
        self.errors = []

    def error_received(self, exc):
        self.errors.append(exc.errno)
        self.close()                            # "the peer is gone: stop"


class CountsErrors(DatagramHandler):
    def __init__(self, sock):
        super().__init__(sock)
        self.errors = []

    def error_received(self, exc):
        self.errors.append(exc.errno)


def unix_datagram_pair_with_full_peer(reactor, handler_class):
    """A handler on a Unix datagram socket whose peer's queue is full (sends would block)."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    handler = reactor.add(handler_class(ours))
    while True:
        try:
            ours.send(b"f" * 64)
        except BlockingIOError:
            return handler, peer


@pytest.mark.timeout(10)
def test_error_received_that_closes_during_queued_sends(reactor, caplog):
    caplog.set_level(logging.WARNING)
    handler, peer = unix_datagram_pair_with_full_peer(reactor, StopsOnError)
    handler.sendto(b"first")
    handler.sendto(b"second")                   # both queued
    peer.close()                                # our next send fails: ECONNREFUSED
    run_until(reactor, lambda: handler.errors, timeout=2)
    reactor.run_once(0)
    assert handler.errors == [errno.ECONNREFUSED]
    assert handler not in reactor.handlers and handler.sock.fileno() == -1
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.timeout(10)
def test_error_received_that_closes_on_a_receive_error(reactor):
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    port = gone.getsockname()[1]
    gone.close()                                # nothing listens there: ICMP port unreachable
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(("127.0.0.1", port))
    handler = reactor.add(StopsOnError(sock))
    handler.sendto(b"anyone?")
    run_until(reactor, lambda: handler.errors, timeout=2)
    reactor.run_once(0)
    assert handler.errors == [errno.ECONNREFUSED]
    assert handler not in reactor.handlers


@pytest.mark.timeout(10)
def test_datagrams_whose_send_failed_count_as_dropped_when_queued(reactor):
    handler, peer = unix_datagram_pair_with_full_peer(reactor, CountsErrors)
    handler.sendto(b"first")
    handler.sendto(b"second")
    assert handler.dropped == 0
    peer.close()
    run_until(reactor, lambda: len(handler.errors) == 2, timeout=2)
    assert handler.dropped == 2 and handler in reactor.handlers


@pytest.mark.timeout(10)
def test_datagram_whose_immediate_send_failed_counts_as_dropped(reactor):
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    handler = reactor.add(CountsErrors(ours))
    peer.close()
    handler.sendto(b"lost")
    assert handler.errors == [errno.ECONNREFUSED] and handler.dropped == 1


# -- 12. a negative timeout ----------------------------------------------------------------------------

def runs_within(reactor, target, seconds, *args):
    """Run target(*args) in a thread; True if it returned in time (else wake the reactor up)."""
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        reactor.call_soon_threadsafe(reactor.stop)
        thread.join(5)
        return False
    return True


@pytest.mark.timeout(10)
@pytest.mark.parametrize("selector", [selectors.DefaultSelector] + SELECTORS,
                         ids=["default"] + [s.__name__ for s in SELECTORS])
def test_run_once_with_a_negative_timeout_does_not_block(selector):
    reactor = Reactor(selector=selector())
    try:
        assert runs_within(reactor, reactor.run_once, 1, -1)
    finally:
        reactor.close()


# -- 13. IPv4-mapped IPv6 networks ------------------------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("peer", ["::ffff:10.1.2.3", "10.1.2.3"])
def test_mapped_deny_network_matches_mapped_and_plain_peers(peer):
    deny = parse_networks(["::ffff:10.0.0.0/104"])
    assert not peer_allowed(peer, [], deny)
    assert peer_allowed("::ffff:11.1.2.3", [], deny) and peer_allowed("11.1.2.3", [], deny)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("peer", ["127.0.0.1", "::ffff:127.0.0.1"])
def test_mapped_allow_network_admits_mapped_and_plain_peers(peer):
    allow = parse_networks(["::ffff:127.0.0.1/128"])
    assert peer_allowed(peer, allow, [])
    assert not peer_allowed("127.0.0.2", allow, [])


@pytest.mark.timeout(10)
@pytest.mark.parametrize("spec, warns", [("::FFFF:10.0.0.0/104", False), ("10.0.0.0/8", False),
                                         ("10.0.0.5/8", True)])
def test_host_bit_warning_only_when_host_bits_are_set(caplog, spec, warns):
    caplog.set_level(logging.WARNING)
    parse_networks([spec])
    assert any("host bits" in r.getMessage() for r in caplog.records) == warns


@pytest.mark.timeout(10)
def test_mapped_allow_rule_serves_a_plain_ipv4_peer(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo, allow=["::ffff:127.0.0.1/128"])
    echo_roundtrip(reactor, listener.address)
    assert listener.refused == 0


@pytest.mark.timeout(10)
def test_mapped_deny_rule_refuses_ipv4_peer_of_a_dual_stack_listener(reactor):
    try:
        listener = listen_tcp(reactor, "::", 0, Echo, deny=["::ffff:127.0.0.0/104"])
    except OSError:
        pytest.skip("no IPv6")
    with socket.create_connection(("127.0.0.1", listener.address[1]), timeout=5) as client:
        run_until(reactor, lambda: peer_closed(client), timeout=2)
    assert listener.refused == 1


# -- 14. close_timeout ------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_close_timeout_with_data_queued_reports_timeout_error(fake):
    reactor, clock = fake
    lost = []

    class Reporting(StreamHandler):
        def connection_lost(self, exc):
            lost.append(exc)

    ours, peer = socket.socketpair()
    with peer:                                  # the peer never reads
        handler = reactor.add(Reporting(ours))
        handler.write(b"z" * (1 << 20))
        assert handler.write_buffer_size > 0
        handler.close()
        clock.advance(handler.close_timeout - 1, reactor)
        assert lost == []
        clock.advance(2, reactor)
        assert len(lost) == 1 and isinstance(lost[0], TimeoutError), lost


# -- 15. stop() before run() ------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_stop_before_run_makes_run_return_after_one_turn(reactor):
    ran = []
    reactor.call_soon(ran.append, "first turn")
    reactor.stop()
    turns = reactor.stats()["turns"]
    assert runs_within(reactor, reactor.run, 2), "run() did not return"
    assert ran == ["first turn"] and reactor.stats()["turns"] == turns + 1
    # the stop was used up: the next run() goes on until it is stopped again
    reactor.call_soon(lambda: reactor.call_soon(lambda: (ran.append("later turn"), reactor.stop())))
    assert runs_within(reactor, reactor.run, 2)
    assert ran == ["first turn", "later turn"]


# -- 16. fill_socket --------------------------------------------------------------------------------

@pytest.mark.timeout(10)
@pytest.mark.parametrize("chunk", [1000, 17, 65536])      # 17: 17 // 16 == 1, the last step
@pytest.mark.parametrize("family", [socket.AF_UNIX, socket.AF_INET], ids=["unix", "tcp"])
def test_fill_socket_returns_and_the_next_send_would_block(chunk, family):
    ours, peer = stream_pair(family)
    with ours, peer:
        thread = threading.Thread(target=fill_socket, args=(ours, chunk), daemon=True)
        thread.start()
        thread.join(2)
        if thread.is_alive():
            ours.close()                        # its next send raises EBADF: the thread ends
            thread.join(5)
            pytest.fail("fill_socket(sock, %d) did not return" % chunk)
        if family == socket.AF_UNIX:            # TCP may free space a moment later (ACKs,
            ours.setblocking(False)             # buffer autotuning): only Unix is exact
            with pytest.raises(BlockingIOError):
                ours.send(b"x")
