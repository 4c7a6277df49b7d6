"""Recipe 11.12's own handler classes on the reactor: as the app (a subprocess answering stdlib
clients) and in-process, where the recipe's contract with its loop shows: TCPServer appends
clients to the "handler list" it was given (the reactor), TCPClient.close() removes itself,
and a handler's wants are asked only after it was called, never on every turn."""
from __future__ import annotations

import os
import re
import socket
import time

import pytest

from apps.recipe1112 import TCPEchoClient, TCPServer, UDPEchoServer, UDPTimeServer
from reactor.testing import ReactorThread, recv_exactly

from . import _proc

CTIME = re.compile(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 123]\d \d\d:\d\d:\d\d \d{4}")


def udp_ask(address, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(payload, address)
        data, peer = sock.recvfrom(65535)
    assert peer == tuple(address)
    return data


def is_now(answer: bytes) -> bool:
    text = answer.decode("ascii")
    return bool(CTIME.fullmatch(text)) and abs(time.mktime(time.strptime(text)) - time.time()) < 5


# -- the app ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app():
    with _proc.running("recipe1112", count=3) as (proc, endpoints):
        yield proc, {(e.scheme, e.service): e.address for e in endpoints}


def test_app_udp_time(app):
    _, addresses = app
    assert is_now(udp_ask(addresses["udp", "time"], b"?"))
    assert is_now(udp_ask(addresses["udp", "time"], b"a longer question"))   # recvfrom(1)


def test_app_udp_echo(app):
    _, addresses = app
    for payload in (b"x", os.urandom(1000), os.urandom(8192)):
        assert udp_ask(addresses["udp", "echo"], payload) == payload


def test_app_tcp_echo(app):
    proc, addresses = app
    clients = []
    try:
        for i in range(3):      # one at a time: the recipe listens with a backlog of 1
            clients.append(socket.create_connection(addresses["tcp", "echo"], timeout=5))
            clients[i].sendall(b"hello %d\n" % i)
            assert recv_exactly(clients[i], 8) == b"hello %d\n" % i
        for i, sock in reversed(list(enumerate(clients))):
            sock.sendall(b"client %d\n" % i)
        for i, sock in enumerate(clients):
            assert recv_exactly(sock, 9) == b"client %d\n" % i
        payload = os.urandom(100_000)
        clients[0].sendall(payload)
        assert recv_exactly(clients[0], len(payload)) == payload
    finally:
        for sock in clients:
            sock.close()
    assert proc.poll() is None


# -- in-process, on a reactor thread ------------------------------------------------------------

class CountingEchoClient(TCPEchoClient):
    """The recipe's echo client, counting how often the loop asks whether it wants to read."""

    def __init__(self, sock, handler_list):
        super().__init__(sock, handler_list)
        self.asked = 0
        self.served = 0

    def wants_to_receive(self):
        self.asked += 1
        return super().wants_to_receive()

    def handle_receive(self):
        self.served += 1
        super().handle_receive()


@pytest.fixture
def recipe():
    """A reactor thread with the recipe's three servers on it; yields (rt, servers by name)."""
    rt = ReactorThread().start()
    servers = {}
    try:
        def build():
            servers["time"] = UDPTimeServer(("127.0.0.1", 0))
            servers["echo"] = UDPEchoServer(("127.0.0.1", 0))
            servers["tcp"] = TCPServer(("127.0.0.1", 0), CountingEchoClient, rt.reactor)
            for handler in servers.values():
                rt.reactor.add(handler)
        rt.call(build)
        yield rt, servers
    finally:
        def teardown():
            for handler in list(rt.reactor.handlers):
                rt.reactor.remove(handler)
                handler.sock.close()        # the recipe's handlers have no handle_close
        rt.call(teardown)
        rt.stop()


def clients(reactor):
    """The recipe clients in the reactor (call on the reactor thread)."""
    return [h for h in reactor.handlers if isinstance(h, CountingEchoClient)]


def clients_of(rt):
    return rt.call(clients, rt.reactor)


def test_recipe_udp_servers_in_process(recipe):
    rt, servers = recipe
    assert is_now(udp_ask(servers["time"].sock.getsockname(), b"t"))
    assert udp_ask(servers["echo"].sock.getsockname(), b"hello") == b"hello"


def test_recipe_tcp_server_appends_and_client_close_removes(recipe):
    rt, servers = recipe
    address = servers["tcp"].sock.getsockname()
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
        [client] = clients_of(rt)                  # appended to the reactor by TCPServer
        assert client.handler_list is rt.reactor
    rt.wait_for(lambda: client not in rt.reactor.handlers)   # EOF -> close() -> remove(self)
    assert client.sock.fileno() == -1
    assert clients_of(rt) == []
    assert servers["tcp"] in rt.call(lambda: rt.reactor.handlers)


def test_recipe_tcp_echo_big_in_process(recipe):
    rt, servers = recipe
    payload = os.urandom(300_000)
    with socket.create_connection(servers["tcp"].sock.getsockname(), timeout=5) as sock:
        sock.sendall(payload)                      # fits the loopback buffers: no reader needed
        assert recv_exactly(sock, len(payload)) == payload


def test_idle_handlers_are_not_asked_again(recipe):
    """The recipe's loop asks every handler wants_to_receive() on every turn; the reactor asks
    only the handler it just called.  Five idle clients, one busy: 100 echoes later, the idle
    ones have not been asked since they were registered."""
    rt, servers = recipe
    address = servers["tcp"].sock.getsockname()
    socks = []
    try:
        for n in range(1, 7):   # one at a time: the recipe listens with a backlog of 1
            socks.append(socket.create_connection(address, timeout=5))
            rt.wait_for(lambda: len(clients(rt.reactor)) == n)
        *idle, busy = socks
        busy.sendall(b"first")
        assert recv_exactly(busy, 5) == b"first"
        [busy_handler] = rt.call(lambda: [h for h in clients(rt.reactor) if h.served])
        idle_handlers = [h for h in clients_of(rt) if h is not busy_handler]
        asked_before = rt.call(lambda: [h.asked for h in idle_handlers])
        assert asked_before == [1] * 5              # once, when it was registered
        for i in range(100):
            message = b"message %03d" % i
            busy.sendall(message)
            assert recv_exactly(busy, len(message)) == message
        asked_after = rt.call(lambda: [h.asked for h in idle_handlers])
        assert asked_after == asked_before
        assert rt.call(lambda: busy_handler.served) >= 101
        assert rt.call(lambda: busy_handler.asked) >= 101        # the busy one is asked
        assert all(rt.call(lambda: h.served) == 0 for h in idle_handlers)
    finally:
        for sock in socks:
            sock.close()
