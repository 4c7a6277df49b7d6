"""DatagramHandler and the UDP apps over real loopback UDP and Unix datagram socket pairs.

Loopback UDP delivers at sendto() time, so a test can put several datagrams in the server's
queue before it turns the reactor once.  A full send buffer cannot be made with UDP on
loopback (the kernel drops instead of refusing), so the bounded queue is tested on an AF_UNIX
SOCK_DGRAM pair: there the sender gets EAGAIN once the receiver's queue is full.
"""
from __future__ import annotations

import socket
import sys
import time

import pytest

from apps.udp import UDPEchoServer, UDPTimeServer
from reactor import DatagramHandler, bind_udp
from reactor.testing import run_until


class Echo(DatagramHandler):
    def __init__(self, sock, **options):
        super().__init__(sock)
        self.__dict__.update(options)
        self.received, self.errors = [], []

    def datagram_received(self, data, addr):
        self.received.append(data)
        self.sendto(data, addr)

    def error_received(self, exc):
        self.errors.append(exc)


def udp_client(family=socket.AF_INET, host="127.0.0.1"):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


def closed_udp_port():
    """A loopback UDP port nobody listens on (bound, then closed: it answers ICMP unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()


def test_udp_echo_answers_a_stdlib_client(reactor):
    server = bind_udp(reactor, "127.0.0.1", 0, Echo)
    with udp_client() as client:
        client.sendto(b"ping", server.address)
        run_until(reactor, lambda: server.received)
        data, addr = client.recvfrom(100)
    assert (data, addr) == (b"ping", server.address)
    assert server.bytes_in == server.bytes_out == 4


def test_one_readable_event_drains_a_batch(reactor):
    server = bind_udp(reactor, "127.0.0.1", 0, Echo)
    with udp_client() as client:
        sent = [b"d%02d" % i for i in range(20)]        # fewer than recv_batch (32)
        for d in sent:
            client.sendto(d, server.address)
        events = reactor.stats()["events"]
        reactor.run_once(1)
        assert server.received == sent
        assert reactor.stats()["events"] == events + 1
        assert [client.recvfrom(100)[0] for _ in sent] == sent


def test_batch_is_capped_at_recv_batch(reactor):
    server = bind_udp(reactor, "127.0.0.1", 0, Echo, recv_batch=4)
    with udp_client() as client:
        for i in range(10):
            client.sendto(b"%d" % i, server.address)
        reactor.run_once(1)
        assert len(server.received) == 4                # the rest waits for the next turns
        run_until(reactor, lambda: len(server.received) == 10)


def test_port_unreachable_on_a_connected_socket_goes_to_error_received(reactor):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.connect(closed_udp_port())
    handler = reactor.add(Echo(sock))
    handler.sendto(b"anyone?")                          # the ICMP comes back as a socket error
    run_until(reactor, lambda: handler.errors)
    assert isinstance(handler.errors[0], ConnectionRefusedError)
    assert handler in reactor.handlers and sock.fileno() != -1
    # the socket still works: a fresh peer on the connected address is answered
    for _ in range(5):                                  # more reports must not hurt either
        handler.sendto(b"again")
        reactor.run_once(0.01)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        try:
            peer.bind(sock.getpeername())
        except OSError as exc:
            pytest.skip(f"the closed port was taken meanwhile: {exc}")
        peer.settimeout(5)
        peer.sendto(b"back", sock.getsockname())
        run_until(reactor, lambda: b"back" in handler.received)
        assert peer.recvfrom(100)[0] == b"back"


def test_port_unreachable_on_an_unbound_peer_does_not_hurt_the_server(reactor):
    # Linux reports ICMP errors on unconnected UDP sockets only with IP_RECVERR; either way the
    # server must survive and keep answering others.
    server = bind_udp(reactor, "127.0.0.1", 0, Echo)
    for _ in range(3):
        server.sendto(b"to nobody", closed_udp_port())
    with udp_client() as gone:
        gone.sendto(b"then vanish", server.address)     # the echo goes to a closed port
    run_until(reactor, lambda: server.received)
    with udp_client() as client:
        client.sendto(b"still there?", server.address)
        run_until(reactor, lambda: b"still there?" in server.received)
        assert client.recvfrom(100)[0] == b"still there?"
    assert server in reactor.handlers
    if sys.platform.startswith("linux"):                # what Linux does without IP_RECVERR
        assert server.errors == []
    assert all(isinstance(e, ConnectionRefusedError) for e in server.errors)


def test_send_queue_is_bounded_and_delivers_in_order(reactor):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.setblocking(False)
    handler = reactor.add(Echo(ours, max_queue=5))
    fillers = 0
    while True:                                         # fill the peer's queue: EAGAIN
        try:
            ours.send(b"filler")
        except BlockingIOError:
            break
        fillers += 1
    for i in range(10):
        handler.sendto(b"q%d" % i)
    assert handler.dropped == 5 and handler.wants_to_send()

    got = []

    def delivered():
        while True:
            try:
                got.append(theirs.recv(100))
            except BlockingIOError:
                break
        return not handler.wants_to_send() and len(got) >= fillers + 5
    run_until(reactor, delivered)
    assert got[:fillers] == [b"filler"] * fillers
    assert got[fillers:] == [b"q0", b"q1", b"q2", b"q3", b"q4"]
    assert handler.dropped == 5
    theirs.close()


def test_udp_apps_answer_stdlib_clients(rt):
    echo = rt.call(bind_udp, rt.reactor, "127.0.0.1", 0, UDPEchoServer)
    clock = rt.call(bind_udp, rt.reactor, "127.0.0.1", 0, UDPTimeServer)
    with udp_client() as client:
        client.sendto(b"hello", echo.address)
        assert client.recvfrom(100) == (b"hello", echo.address)
        before = time.time()
        client.sendto(b"", clock.address)
        data, addr = client.recvfrom(100)
    assert addr == clock.address
    answered = time.mktime(time.strptime(data.decode("ascii")))     # time.ctime() format
    assert before - 2 <= answered <= time.time() + 1


def test_udp_over_ipv6(reactor):
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        server = bind_udp(reactor, "::1", 0, Echo)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with udp_client(socket.AF_INET6, "::1") as client:
        client.sendto(b"six", server.address)
        run_until(reactor, lambda: server.received)
        assert client.recvfrom(100)[0] == b"six"
