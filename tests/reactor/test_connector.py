"""Connector over real loopback: success, refusal, timeout, cancel, IPv6 and Unix paths.

The peer is always a stdlib socket.  A connect that stays pending on loopback is made the way
Linux allows: a listener with `listen(0)` whose one-slot accept queue is already full drops
further SYNs, so the next connect waits for a SYN retransmit (1 s, then 3 s...) and the
connector's deadline is what ends it.
"""
from __future__ import annotations

import errno
import socket

import pytest

from reactor import Reactor, StreamHandler, connect_tcp, connect_unix
from reactor.testing import FakeClock, recv_exactly, run_until


class Recorder(StreamHandler):
    def __init__(self, sock, address=None):
        super().__init__(sock, address)
        self.data = bytearray()

    def data_received(self, data):
        self.data += data


class Outcome:
    """Collects the connector's callbacks."""

    def __init__(self):
        self.connected, self.errors = [], []
        self.options = {"on_connect": self.connected.append, "on_error": self.errors.append}

    def __call__(self):
        return bool(self.connected or self.errors)


def exchange(reactor, handler, server_side):
    """Data both ways between our handler and the stdlib peer."""
    server_side.settimeout(5)
    server_side.sendall(b"hello")
    run_until(reactor, lambda: bytes(handler.data) == b"hello")
    handler.write(b"world")
    assert recv_exactly(server_side, 5) == b"world"


def test_connect_tcp_hands_the_socket_to_the_factory(reactor):
    with socket.create_server(("127.0.0.1", 0)) as server:
        outcome = Outcome()
        connector = connect_tcp(reactor, "127.0.0.1", server.getsockname()[1], Recorder,
                                **outcome.options)
        run_until(reactor, outcome)
        assert outcome.errors == []
        (handler,) = outcome.connected
        assert isinstance(handler, Recorder) and handler is connector.handler
        assert reactor.handlers == {handler}                # the connector has left
        server.settimeout(5)
        peer, _ = server.accept()
        with peer:
            exchange(reactor, handler, peer)


def test_refused_connect_reports_and_leaves_nothing(reactor):
    with socket.socket() as bound:                       # bound, not listening: the kernel RSTs
        bound.bind(("127.0.0.1", 0))
        outcome = Outcome()
        connector = connect_tcp(reactor, "127.0.0.1", bound.getsockname()[1], Recorder,
                                **outcome.options)
        run_until(reactor, outcome)
    assert outcome.connected == []
    (exc,) = outcome.errors
    assert isinstance(exc, ConnectionRefusedError) and exc.errno == errno.ECONNREFUSED
    assert connector.error is exc and connector.handler is None
    assert reactor.handlers == frozenset()
    assert connector.sock.fileno() == -1


def test_pending_connect_times_out(reactor, full_backlog):
    outcome = Outcome()
    connector = connect_tcp(reactor, *full_backlog, Recorder, timeout=0.2, **outcome.options)
    run_until(reactor, outcome, timeout=3)
    assert outcome.connected == []
    (exc,) = outcome.errors
    assert isinstance(exc, TimeoutError)
    assert connector.sock.fileno() == -1
    assert reactor.handlers == frozenset()


def test_connect_deadline_follows_the_reactor_clock(full_backlog):
    clock = FakeClock()
    reactor = Reactor(clock=clock)
    try:
        outcome = Outcome()
        connector = connect_tcp(reactor, *full_backlog, Recorder, timeout=30, **outcome.options)
        clock.advance(29.9, reactor)
        reactor.run_once(0.05)
        assert not outcome() and connector in reactor.handlers    # really pending, not failed
        clock.advance(0.2, reactor)
        (exc,) = outcome.errors
        assert isinstance(exc, TimeoutError)
        assert connector.sock.fileno() == -1 and reactor.handlers == frozenset()
    finally:
        reactor.close()


def test_cancel_calls_nothing_and_closes_the_socket(reactor, full_backlog):
    outcome = Outcome()
    connector = connect_tcp(reactor, *full_backlog, Recorder, timeout=5, **outcome.options)
    connector.cancel()
    reactor.run_once(0.05)
    assert not outcome()
    assert connector.sock.fileno() == -1 and reactor.handlers == frozenset()
    assert reactor.stats()["timers"] == 0


def test_connect_tcp_ipv6(reactor):
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with server:
        outcome = Outcome()
        connect_tcp(reactor, "::1", server.getsockname()[1], Recorder, **outcome.options)
        run_until(reactor, outcome)
        (handler,) = outcome.connected
        assert handler.sock.family == socket.AF_INET6
        server.settimeout(5)
        peer, _ = server.accept()
        with peer:
            exchange(reactor, handler, peer)


def test_connect_unix(reactor, tmp_path):
    path = str(tmp_path / "peer.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        outcome = Outcome()
        connect_unix(reactor, path, Recorder, **outcome.options)
        run_until(reactor, outcome)
        (handler,) = outcome.connected
        assert reactor.handlers == {handler}
        server.settimeout(5)
        peer, _ = server.accept()
        with peer:
            exchange(reactor, handler, peer)


def test_connect_unix_to_a_missing_path(reactor, tmp_path):
    outcome = Outcome()
    connector = connect_unix(reactor, str(tmp_path / "nobody.sock"), Recorder, **outcome.options)
    run_until(reactor, outcome)
    (exc,) = outcome.errors
    assert isinstance(exc, FileNotFoundError)
    assert connector.sock.fileno() == -1 and reactor.handlers == frozenset()
