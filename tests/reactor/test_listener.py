"""Listener over real loopback: accept batches, limits, CIDR filters, EMFILE, IPv6/Unix, > 1024 fds.

Most tests turn the reactor themselves (`reactor` fixture + `run_until`) so that what is accepted
when is under the test's control; clients are blocking stdlib sockets with timeouts, whose
connects complete in the kernel's backlog before the reactor accepts anything.  The EMFILE test
runs in a child process because it lowers RLIMIT_NOFILE, which would starve pytest itself.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import textwrap

import pytest

from reactor import EventHandler, StreamHandler, listen_tcp, listen_unix, parse_networks, peer_allowed
from reactor.testing import recv_exactly, run_until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Echo(StreamHandler):
    def data_received(self, data):
        self.write(data)


class Bare(EventHandler):
    """A recipe-style handler that leaves its socket exactly as the listener handed it over."""

    def __init__(self, sock, addr):
        self.sock, self.addr = sock, addr

    def fileno(self):
        return self.sock.fileno()

    def handle_close(self):
        self.sock.close()


def connect(addr, family=socket.AF_INET, timeout=5):
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(addr)
    return sock


def turn_until_closed(reactor, sock, timeout=2):
    """Turn the reactor until the server has closed or reset sock (single-threaded tests)."""
    sock.setblocking(False)

    def gone():
        try:
            return sock.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True
    return run_until(reactor, gone, timeout)


def nonblocking_at_os_level(sock):
    return bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


# -- accepting ---------------------------------------------------------------------------------

def test_one_readable_event_accepts_a_whole_burst(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo)
    clients = [connect(listener.address) for _ in range(50)]
    try:
        turns = 0
        while reactor.stats()["accepts"] < 50 and turns < 2:    # 2: the last ACK may trail
            reactor.run_once(1)
            turns += 1
        assert reactor.stats()["accepts"] == 50
        assert len(listener.connections) == 50
    finally:
        for c in clients:
            c.close()


def test_accepted_stream_sockets_are_nonblocking_with_nodelay(reactor):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo)
    with connect(listener.address):
        run_until(reactor, lambda: listener.connections)
        (handler,) = listener.connections
        assert handler.sock.getblocking() is False and nonblocking_at_os_level(handler.sock)
        assert handler.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_listener_hands_the_factory_a_nonblocking_socket(reactor):
    # The listener promises "every accepted socket is made non-blocking", whatever the factory:
    # a recipe-style handler that never calls setblocking() must not get a blocking socket.
    listener = listen_tcp(reactor, "127.0.0.1", 0, Bare)
    with connect(listener.address):
        run_until(reactor, lambda: listener.connections)
        (handler,) = listener.connections
        assert nonblocking_at_os_level(handler.sock), "accepted socket is blocking"


# -- the connection limit ----------------------------------------------------------------------

def test_connection_limit_holds_the_rest_in_the_backlog_and_resumes(reactor):
    limit = 3
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo, max_connections=limit)
    clients = [connect(listener.address) for _ in range(limit + 5)]
    try:
        run_until(reactor, lambda: len(listener.connections) == limit)
        for _ in range(5):                                      # nothing more comes in
            reactor.run_once(0.02)
        assert len(listener.connections) == limit
        assert reactor.stats()["accepts"] == limit
        assert not listener.wants_to_receive()
        for c in clients[:limit]:
            c.sendall(b"a")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= limit)
        assert [recv_exactly(c, 1) for c in clients[:limit]] == [b"a"] * limit

        clients[0].close()                                      # one leaves: the next comes in
        run_until(reactor, lambda: reactor.stats()["accepts"] == limit + 1)
        assert len(listener.connections) == limit and not listener.wants_to_receive()
        clients[limit].sendall(b"late")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= limit + 4)
        assert recv_exactly(clients[limit], 4) == b"late"
    finally:
        for c in clients:
            c.close()


# -- allow / deny ------------------------------------------------------------------------------

@pytest.mark.parametrize("allow, deny", [
    (None, ["127.0.0.0/8"]),
    (["10.0.0.0/8"], None),
    (["127.0.0.0/8"], ["127.0.0.1/32"]),          # deny wins over allow
], ids=["denied", "not-allowed", "deny-wins"])
def test_refused_peer_is_reset_before_any_handler_exists(reactor, allow, deny):
    built = []
    listener = listen_tcp(reactor, "127.0.0.1", 0, lambda s, a: built.append(a) or Echo(s, a),
                          allow=allow, deny=deny)
    with connect(listener.address) as client:
        turn_until_closed(reactor, client)
    assert listener.refused == 1
    assert built == [] and not listener.connections
    assert reactor.handlers == {listener}


@pytest.mark.parametrize("allow", [["127.0.0.1/32"], ["127.0.0.5/8"]], ids=["exact", "host-bits"])
def test_allowed_peer_is_served(reactor, allow):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo, allow=allow)
    with connect(listener.address) as client:
        client.sendall(b"ping")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= 4)
        assert recv_exactly(client, 4) == b"ping"
    assert listener.refused == 0


def test_ipv4_mapped_peer_is_judged_by_its_ipv4_address(reactor):
    assert peer_allowed("::ffff:10.0.0.1", parse_networks(["10.0.0.0/8"]), [])
    assert not peer_allowed("::ffff:10.0.0.1", [], parse_networks(["10.0.0.0/8"]))
    assert not peer_allowed("::ffff:11.0.0.1", parse_networks(["10.0.0.0/8"]), [])
    # and for real: an IPv6 socket bound to the mapped loopback sees an IPv4 client as ::ffff:...
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        listener = listen_tcp(reactor, "::ffff:127.0.0.1", 0, Echo, deny=["127.0.0.0/8"])
    except OSError as exc:
        pytest.skip(f"cannot bind the IPv4-mapped loopback: {exc}")
    with connect(("127.0.0.1", listener.address[1])) as client:
        turn_until_closed(reactor, client)
    assert listener.refused == 1 and not listener.connections


def test_deny_wins_over_allow():
    net = parse_networks(["127.0.0.0/8"])
    assert not peer_allowed("127.0.0.1", allow=net, deny=net)
    assert peer_allowed("127.0.0.1", allow=net, deny=parse_networks(["10.0.0.0/8"]))


def test_host_bits_are_accepted_as_the_network_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="reactor.listener"):
        (net,) = parse_networks(["127.0.0.5/8"])
    assert str(net) == "127.0.0.0/8"
    assert peer_allowed("127.200.0.1", [net], [])
    assert any("127.0.0.5/8" in r.getMessage() for r in caplog.records)


def test_unix_peer_passes_deny_lists_but_not_allow_lists():
    assert peer_allowed("", [], parse_networks(["127.0.0.0/8"]))
    assert not peer_allowed("", parse_networks(["127.0.0.0/8"]), [])


# -- out of descriptors ------------------------------------------------------------------------

EMFILE_CHILD = textwrap.dedent(r"""
    import errno, json, os, resource, socket, sys, time
    from reactor import Reactor, StreamHandler, listen_tcp
    from reactor.testing import run_until

    class Echo(StreamHandler):
        def data_received(self, data):
            self.write(data)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    reactor = Reactor()
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo)
    clients = [socket.create_connection(listener.address, timeout=5) for _ in range(50)]
    for c in clients:
        c.setblocking(False)
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc

    def gone(c):
        try:
            return c.recv(1) == b""
        except BlockingIOError:
            return False
        except ConnectionResetError:
            return True

    # One second with the table full: count turns, and when the waiting clients were let go.
    turns0, start, all_closed_after = reactor.stats()["turns"], time.monotonic(), None
    open_clients = set(clients)
    while time.monotonic() - start < 1.0:
        reactor.run_once(0.1)
        open_clients = {c for c in open_clients if not gone(c)}
        if not open_clients and all_closed_after is None:
            all_closed_after = time.monotonic() - start
    exhausted = reactor.stats()
    for c in clients:
        c.close()
    for fd in fillers:
        os.close(fd)

    # Descriptors are back: a new client is served.
    client = socket.create_connection(listener.address, timeout=5)
    client.sendall(b"ping")
    client.setblocking(False)
    got = bytearray()
    def echoed():
        try:
            got.extend(client.recv(16))
        except BlockingIOError:
            pass
        return bytes(got) == b"ping"
    try:
        run_until(reactor, echoed, timeout=5)
    except TimeoutError:
        pass
    print(json.dumps({
        "fillers": len(fillers),
        "turns": exhausted["turns"] - turns0,
        "accept_errors": exhausted["accept_errors"],
        "still_open": len(open_clients),
        "all_closed_after": all_closed_after,
        "echo": got.decode("ascii", "replace"),
    }))
""")


def test_out_of_descriptors_does_not_spin_and_recovers():
    proc = subprocess.run([sys.executable, "-c", EMFILE_CHILD], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fillers"] > 0                        # the table really was full
    assert result["accept_errors"] > 0
    assert result["turns"] < 200, result                # a level-triggered spin makes 10^4+
    assert result["still_open"] == 0, result            # waiting peers closed, not left hanging
    assert result["all_closed_after"] is not None and result["all_closed_after"] < 0.5, result
    assert result["echo"] == "ping", result
    assert "Traceback" not in proc.stderr


# -- families and scale ------------------------------------------------------------------------

def test_ipv6_listener(reactor):
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    try:
        listener = listen_tcp(reactor, "::1", 0, Echo)
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    assert listener.sock.family == socket.AF_INET6
    with connect(listener.address[:2], socket.AF_INET6) as client:
        client.sendall(b"six")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= 3)
        assert recv_exactly(client, 3) == b"six"
    (handler,) = listener.connections
    assert handler.address[0] == "::1"


def test_unix_listener_serves_and_removes_its_file(reactor, tmp_path):
    path = str(tmp_path / "echo.sock")
    listener = listen_unix(reactor, path, Echo)
    assert os.path.exists(path)
    with connect(path, socket.AF_UNIX) as client:
        client.sendall(b"unix")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= 4)
        assert recv_exactly(client, 4) == b"unix"
    listener.close()
    assert not os.path.exists(path)
    assert listener not in reactor.handlers


def test_unix_listener_replaces_a_stale_socket_file(reactor, tmp_path):
    path = str(tmp_path / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                       # the file stays behind
    listener = listen_unix(reactor, path, Echo)
    with connect(path, socket.AF_UNIX) as client:
        client.sendall(b"x")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= 1)
        assert recv_exactly(client, 1) == b"x"
    listener.close()


@pytest.fixture
def many_fds():
    """Make room for n descriptors (soft limit toward the hard one), restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def need(n):
        if soft != resource.RLIM_INFINITY and soft < n:
            if hard != resource.RLIM_INFINITY and hard < n:
                pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    yield need
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_more_than_1024_concurrent_connections(reactor, many_fds):
    n = 1100                                            # each is two descriptors in this process
    many_fds(2 * n + 200)
    listener = listen_tcp(reactor, "127.0.0.1", 0, Echo)
    clients = []
    try:
        for _ in range(n):
            clients.append(connect(listener.address))
        run_until(reactor, lambda: len(listener.connections) == n, timeout=10)
        assert max(h.fileno() for h in listener.connections) > 1024
        for c in clients:
            c.sendall(b"!")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= n, timeout=10)
        assert all(recv_exactly(c, 1) == b"!" for c in clients)
    finally:
        for c in clients:
            c.close()


# -- errors ------------------------------------------------------------------------------------

class Fragile(Echo):
    def data_received(self, data):
        if data == b"boom":
            raise RuntimeError("boom in data_received")
        super().data_received(data)


def test_error_in_one_connection_closes_only_that_one(reactor, caplog):
    listener = listen_tcp(reactor, "127.0.0.1", 0, Fragile)
    with connect(listener.address) as bad, connect(listener.address) as good:
        run_until(reactor, lambda: len(listener.connections) == 2)
        with caplog.at_level(logging.ERROR):
            bad.sendall(b"boom")
            turn_until_closed(reactor, bad)
        assert len(listener.connections) == 1 and listener in reactor.handlers
        good.sendall(b"still")
        run_until(reactor, lambda: reactor.stats()["bytes_out"] >= 5)
        assert recv_exactly(good, 5) == b"still"
    logged = [r for r in caplog.records
              if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
