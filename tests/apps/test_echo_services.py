"""apps.echo and apps.udp as a user runs them: a subprocess on loopback, stdlib sockets as the
oracle.  Besides plain echo, the hard cases of DESIGN.md "Errors and limits": over-long lines,
connection limits, refused peers, half-closes, resets, writes to a vanished peer, and a stop
signal arriving while data is still queued."""
from __future__ import annotations

import contextlib
import os
import re
import select
import selectors
import signal
import socket
import struct
import time
import urllib.request

import pytest

from . import _proc

MiB = 1 << 20


@pytest.fixture
def echo():
    """start the echo app with extra flags; returns (process, (host, port))."""
    started = []

    def run(*args):
        proc, [endpoint] = _proc.start("echo", *args)
        started.append(proc)
        assert (endpoint.scheme, endpoint.service) == ("tcp", "echo")
        return proc, endpoint.address
    yield run
    for proc in started:
        _proc.stop(proc)


def exchange(address, payload: bytes, chunks=None, shut: bool = True, timeout: float = 10.0) -> bytes:
    """Send payload (in the given chunk sizes, cycled) while reading; with shut, half-close
    after the last byte and read until EOF, else until len(payload) bytes came back."""
    sizes = list(chunks or [256 * 1024])
    deadline = time.monotonic() + timeout
    received, sent, i = bytearray(), 0, 0
    with socket.create_connection(address, timeout=timeout) as sock, \
            selectors.DefaultSelector() as sel:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        view = memoryview(payload)
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"sent {sent}, received {len(received)} of {len(payload)}"
            for _, mask in sel.select(left):
                if mask & selectors.EVENT_WRITE:
                    size = sizes[i % len(sizes)]
                    n = sock.send(view[sent:sent + size])
                    if n == size or sent + n == len(payload):
                        i += 1
                    sent += n
                    if sent == len(payload):
                        if shut:
                            sock.shutdown(socket.SHUT_WR)
                        sel.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    data = sock.recv(MiB)
                    if not data:
                        return bytes(received)
                    received += data
            if not shut and len(received) >= len(payload):
                return bytes(received)


def refused_or_closed(sock: socket.socket) -> bool:
    """True when the server ended this connection (EOF or reset) without answering."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def not_served(sock: socket.socket, wait: float = 0.3) -> bool:
    """True when nothing arrives within `wait` seconds (a bounded negative check)."""
    readable, _, _ = select.select([sock], [], [], wait)
    return not readable


# -- plain echo ---------------------------------------------------------------------------------

def test_echo_small(echo):
    _, address = echo()
    assert _proc.echo_roundtrip(address, b"ping") == b"ping"


def test_echo_one_mib(echo):
    _, address = echo()
    payload = os.urandom(MiB)
    assert exchange(address, payload) == payload


def test_echo_split_sends(echo):
    _, address = echo()
    payload = os.urandom(200_003)
    assert exchange(address, payload, chunks=[1, 2, 3, 7, 1000, 4096, 65537]) == payload


def test_echo_serves_connections_independently(echo):
    _, address = echo()
    socks = [socket.create_connection(address, timeout=5) for _ in range(5)]
    try:
        for n, sock in reversed(list(enumerate(socks))):
            sock.sendall(b"%d" % n)
        assert [_proc.recv_n(s, 1) for s in socks] == [b"%d" % n for n in range(5)]
    finally:
        for sock in socks:
            sock.close()


# -- --lines ------------------------------------------------------------------------------------

def test_lines_echo_line_by_line(echo):
    _, address = echo("--lines")
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"one\ntw")
        assert _proc.recv_n(sock, 4) == b"one\n"
        assert not_served(sock)                  # half a line is not echoed
        sock.sendall(b"o\nthree\n")
        assert _proc.recv_n(sock, 10) == b"two\nthree\n"
        sock.sendall(b"tail")
        sock.shutdown(socket.SHUT_WR)            # EOF ends the last, unterminated line
        assert _proc.recv_to_eof(sock) == b"tail"


@pytest.mark.parametrize("wire", [b"x" * 101, b"y" * 150 + b"\n"], ids=["no-newline-yet", "newline"])
def test_overlong_line_closes_only_that_connection(echo, wire):
    proc, address = echo("--lines", "--max-line", "100")
    with socket.create_connection(address, timeout=5) as good, \
            socket.create_connection(address, timeout=5) as bad:
        good.sendall(b"a" * 100 + b"\n")                   # exactly max_line is fine
        assert _proc.recv_n(good, 101) == b"a" * 100 + b"\n"
        bad.sendall(b"ok\n")
        assert _proc.recv_n(bad, 3) == b"ok\n"
        bad.sendall(wire)
        assert refused_or_closed(bad)
        good.sendall(b"still here\n")
        assert _proc.recv_n(good, 11) == b"still here\n"
    assert proc.poll() is None


# -- limits -------------------------------------------------------------------------------------

def test_max_connections_holds_the_third_until_one_closes(echo):
    _, address = echo("--max-connections", "2")
    first = socket.create_connection(address, timeout=5)
    second = socket.create_connection(address, timeout=5)
    third = socket.create_connection(address, timeout=5)      # the kernel's backlog holds it
    try:
        for sock, msg in ((first, b"1"), (second, b"2")):
            sock.sendall(msg)
            assert _proc.recv_n(sock, 1) == msg
        third.sendall(b"3")
        assert not_served(third, 0.5)
        first.close()
        assert _proc.recv_n(third, 1) == b"3"
        second.sendall(b"2")
        assert _proc.recv_n(second, 1) == b"2"
    finally:
        for sock in (first, second, third):
            sock.close()


def refused(address) -> bool:
    """Connect and say hello: True if the server resets or closes without answering (the
    reset may come so fast that connect() itself reports it)."""
    try:
        with socket.create_connection(address, timeout=2) as sock:
            sock.sendall(b"ping")
            return sock.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_deny_refuses_at_once(echo):
    proc, address = echo("--deny", "127.0.0.0/8")
    for _ in range(3):
        t0 = time.monotonic()
        assert refused(address)
        assert time.monotonic() - t0 < 1.0
    assert proc.poll() is None


def test_allow_other_network_refuses_loopback(echo):
    _, address = echo("--allow", "10.0.0.0/8")
    assert refused(address)


def test_allow_own_network_serves(echo):
    _, address = echo("--allow", "127.0.0.1/32", "--deny", "10.0.0.0/8")
    assert _proc.echo_roundtrip(address, b"ping") == b"ping"


def dual_stack() -> bool:
    """Whether this machine binds "::" and, by default, takes IPv4 peers on it as ::ffff:a.b.c.d
    (net.ipv6.bindv6only off), and reaches ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::", 0))
            if probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY):
                return False
            probe.listen(1)
            port = probe.getsockname()[1]
            for host in ("127.0.0.1", "::1"):
                with socket.create_connection((host, port), timeout=2):
                    pass
    except OSError:
        return False
    return True


needs_dual_stack = pytest.mark.skipif(not dual_stack(), reason="no dual-stack IPv6 here")


@needs_dual_stack
def test_mapped_ipv4_peer_is_judged_by_ipv4_rules_on_a_dual_stack_listener(echo):
    """On --host :: an IPv4 client arrives as ::ffff:127.0.0.1; 127.0.0.0/8 rules apply to it,
    and not to ::1 (the contrast shows the rule, not the socket, decides)."""
    proc, (host, port) = echo("--host", "::", "--deny", "127.0.0.0/8")
    assert host == "::"
    assert refused(("127.0.0.1", port))
    assert _proc.echo_roundtrip(("::1", port), b"ping") == b"ping"
    assert _proc.stop(proc) == 0
    assert "refused connection from ('::ffff:127.0.0.1'" in proc.stderr_text   # how it came in
    assert proc.stdout_lines == [f"listening tcp://[::]:{port} echo"]

    _, (_, port) = echo("--host", "::", "--allow", "127.0.0.1/32")
    assert _proc.echo_roundtrip(("127.0.0.1", port), b"ping") == b"ping"
    assert refused(("::1", port))


STREAM_ENDPOINTS = {("tcp", "echo"), ("http", "rest"), ("http", "kvstore"), ("tcp", "mpecho"),
                    ("tcp", "rpc"), ("tcp", "arrays")}


def test_serve_passes_deny_to_every_stream_service():
    with _proc.running("serve", "--deny", "127.0.0.0/8", count=8) as (proc, endpoints):
        found = {(e.scheme, e.service): e.address for e in endpoints}
        assert STREAM_ENDPOINTS <= set(found)
        for key in sorted(STREAM_ENDPOINTS):
            assert refused(found[key]), f"{key} served a denied peer"
        assert udp_ask(found[("udp", "echo")], b"udp has no rules") == b"udp has no rules"
    assert proc.returncode == 0


def test_serve_allow_own_network_serves():
    with _proc.running("serve", "--allow", "127.0.0.1/32", "--max-connections", "50",
                       "--only", "echo,rest", count=2) as (proc, endpoints):
        found = {e.service: e.address for e in endpoints}
        assert _proc.echo_roundtrip(found["echo"], b"ping") == b"ping"
        host, port = found["rest"]
        with urllib.request.urlopen(f"http://{host}:{port}/hello?name=cidr", timeout=5) as resp:
            assert resp.status == 200 and "Hello cidr!" in resp.read().decode()
    assert proc.returncode == 0


# -- closes, resets, vanished peers -------------------------------------------------------------

def test_half_close_gets_full_echo_then_eof(echo):
    _, address = echo()
    payload = os.urandom(3 * MiB // 2)
    assert exchange(address, payload, chunks=[65536, 1]) == payload     # EOF ends exchange


def send_until_blocked(sock: socket.socket, payload: bytes) -> int:
    """Send without reading until all is sent or the kernel takes nothing for 0.3 s."""
    sock.setblocking(False)
    sent = 0
    while sent < len(payload):
        try:
            sent += sock.send(payload[sent:sent + 65536])
        except BlockingIOError:
            if not select.select([], [sock], [], 0.3)[1]:
                break
    sock.setblocking(True)
    return sent


def half_close_with_echo_queued(address, step: int = 16 * 1024) -> tuple[socket.socket, bytes]:
    """A peer that half-closes while the server holds some of its echo in its own buffer
    (the kernel's send buffer being full) but is still below its high-water mark, so it is
    still reading and sees the EOF.  Found by feeding `step` bytes at a time and reading the
    kernel's queues (/proc/net/tcp) until the server's echo no longer fits in the kernel."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(address)
    me, server = sock.getsockname()[1], address[1]
    payload, sent = bytearray(), 0
    deadline = time.monotonic() + 10
    while True:
        chunk = os.urandom(step)
        sock.sendall(chunk)
        payload += chunk
        sent += step
        stalled_since = None
        while True:                                   # until the server has read it all
            queues = _proc.tcp_queues_pair(me, server)
            (my_tx, my_rx), (srv_tx, srv_rx) = queues[me], queues[server]
            if my_tx == srv_rx == 0:
                break
            # Bytes in flight on loopback count in both sockets' queues, so under load the
            # test below can miss echo held by the server until it passes its high-water mark
            # and (rightly) stops reading.  That also means echo waits in its memory: done.
            if srv_rx == 0 and my_tx:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.2:
                    sock.shutdown(socket.SHUT_WR)
                    return sock, bytes(payload)
            else:
                stalled_since = None
            assert time.monotonic() < deadline, "the server stopped reading"
            select.select([], [], [], 0.001)          # a poll interval
        if sent - srv_tx - my_rx > 0:                 # echo waiting in the server's memory
            sock.shutdown(socket.SHUT_WR)
            return sock, bytes(payload)
        assert sent < 64 * MiB, "the kernel took all the echo"


def test_idle_after_half_closed_peers(echo):
    """A half-closed socket stays readable forever; a server that kept polling it would spin
    (waitress CVE-2024-49769).  Peers half-close after reading their echo, while the server
    is still flushing theirs, and while it has stopped reading them (above high water); the
    process's CPU time while they sit there must stay near zero."""
    proc, address = echo()
    with contextlib.ExitStack() as stack:
        done = stack.enter_context(socket.create_connection(address, timeout=5))
        done.sendall(b"bye")
        done.shutdown(socket.SHUT_WR)
        assert _proc.recv_to_eof(done) == b"bye"     # left open on our side

        flushing, flushing_expected = half_close_with_echo_queued(address)
        stack.enter_context(flushing)

        paused = stack.enter_context(socket.socket())
        paused.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        paused.settimeout(5)
        paused.connect(address)
        payload = os.urandom(8 * MiB)
        paused_expected = payload[:send_until_blocked(paused, payload)]
        paused.shutdown(socket.SHUT_WR)

        exchange(address, b"sync", shut=False)       # the server has had a turn since
        before = _proc.cpu_seconds(proc.pid)
        time.sleep(1.0)                              # the measurement window, not a wait
        used = _proc.cpu_seconds(proc.pid) - before
        assert used < 0.2, f"{used:.2f} s of CPU in 1 s with idle half-closed peers"
        assert _proc.recv_to_eof(flushing) == flushing_expected
        assert _proc.recv_to_eof(paused) == paused_expected


def test_reset_mid_stream_does_not_hurt_others(echo):
    proc, address = echo()
    with socket.create_connection(address, timeout=5) as other:
        other.sendall(b"before")
        assert _proc.recv_n(other, 6) == b"before"
        for _ in range(3):
            victim = socket.create_connection(address, timeout=5)
            victim.sendall(os.urandom(512 * 1024))
            victim.recv(1)                       # the server is echoing mid-stream
            victim.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            victim.close()                       # RST
        payload = os.urandom(MiB)
        other.sendall(b"after")
        assert _proc.recv_n(other, 5) == b"after"
    assert exchange(address, payload) == payload
    assert proc.poll() is None


def test_writing_to_a_vanished_peer_does_not_kill_the_server(echo):
    """Peers that send a lot, stop sending and close without reading their echo: the server
    keeps writing to dead sockets and must get EPIPE/ECONNRESET, never a fatal SIGPIPE.
    (With SIGPIPE at its default action, this kills the process within a few rounds.)"""
    proc, address = echo()
    for _ in range(5):
        sock = socket.create_connection(address, timeout=5)
        send_until_blocked(sock, os.urandom(4 * MiB))
        sock.shutdown(socket.SHUT_WR)
        sock.close()                 # unread echo on our side: the kernel answers with RST
        assert _proc.echo_roundtrip(address, b"alive?") == b"alive?"
    assert proc.poll() is None
    assert _proc.stop(proc) == 0
    assert "Traceback" not in proc.stderr_text, proc.stderr_text


def test_sigterm_delivers_queued_data_then_clean_eof():
    """A client sends 8 MiB and reads nothing, so the server stops reading with echo queued in
    its own memory.  SIGTERM then: the client must get, in order and without a reset, at least
    every byte the server had read (= echoed), then EOF; and the server exits 0.

    What the server read is measured from the kernel's queues (/proc/net/tcp): what we sent,
    less what our socket has not delivered, less what waits unread in the server's socket."""
    proc, [endpoint] = _proc.start("echo")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)   # back-pressure early
        sock.settimeout(5)
        sock.connect(endpoint.address)
        me, server = sock.getsockname()[1], endpoint.port
        payload = os.urandom(8 * MiB)
        sock.setblocking(False)
        sent = 0
        while sent < len(payload):
            try:
                sent += sock.send(payload[sent:sent + MiB])
            except BlockingIOError:
                if not select.select([], [sock], [], 0.5)[1]:
                    break                        # the server has stopped reading

        def server_state():
            queues = _proc.tcp_queues_pair(me, server)
            (my_tx, my_rx), (srv_tx, srv_rx) = queues[me], queues[server]
            read = sent - my_tx - srv_rx          # what the server took from its socket
            queued = read - srv_tx - my_rx        # echoed into its own buffer, not the kernel's
            return read, queued
        deadline, previous, state = time.monotonic() + 5, None, server_state()
        while state != previous or state[1] <= 0:      # until settled, with echo queued
            assert time.monotonic() < deadline, f"server never queued echo: read, queued = {state}"
            select.select([], [], [], 0.02)            # a poll interval
            previous, state = state, server_state()
        server_read = state[0]

        proc.send_signal(signal.SIGTERM)
        sock.setblocking(True)
        sock.settimeout(10)
        received = bytearray()
        try:
            while data := sock.recv(MiB):
                received += data
        except ConnectionResetError:
            pytest.fail(f"reset after {len(received)} bytes; the server had read {server_read}")
        assert bytes(received) == payload[:len(received)]
        assert server_read <= len(received) <= sent
    finally:
        sock.close()
        status = _proc.stop(proc, None)
    assert status == 0, proc.stderr_text


# -- UDP ----------------------------------------------------------------------------------------

CTIME = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
                   r" [ 123]\d \d\d:\d\d:\d\d \d{4}")


def udp_ask(address, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(payload, address)
        data, peer = sock.recvfrom(65535)
    assert peer == address
    return data


def check_ctime(answer: bytes) -> None:
    text = answer.decode("ascii")
    assert CTIME.fullmatch(text), text
    then = time.mktime(time.strptime(text))
    assert abs(then - time.time()) < 5


@pytest.fixture
def udp_app():
    with _proc.running("udp", count=2) as (proc, endpoints):
        yield proc, {e.service: e.address for e in endpoints}


def test_udp_time(udp_app):
    _, addresses = udp_app
    for question in (b"", b"x", b"what time is it?" * 100):
        check_ctime(udp_ask(addresses["time"], question))


def test_udp_echo(udp_app):
    proc, addresses = udp_app
    for payload in (b"x", os.urandom(1400), os.urandom(60_000)):
        assert udp_ask(addresses["echo"], payload) == payload
    assert proc.poll() is None
